"""Evaluation results as data: one JSON document per evaluation, plus a flat CSV of its records.

Plots and tables are drawn from these files only, so every figure can be regenerated. The JSON
holds the run and checkpoint names, the model config, the run's training length and policy, the
settings (split, protocols, lengths, budget, chunk size), the machine, and

    records         one dict per (protocol, L): loss with its 95% interval (loss_low, loss_high),
                    the paired change from the previous L (delta_prev, _low, _high),
                    perplexity, bits_per_byte, n_tokens, ..., and the per-text-block sums
                    (block_nll, block_tokens) the intervals are computed from
    classification  per protocol, the Definition 2.1 verdict and its evidence
                    (``longssm.eval.classify``)
    positions       optional per-position curves (``longssm.eval.positions``)
    effrem          optional Effective Remembrance curve (``longssm.eval.effrem``)

Files are never overwritten silently: ``save_results`` picks ``results-2.json``, ``results-3.json``
... unless ``force=True``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
from pathlib import Path

import torch

from longssm.eval.errors import EvalError

FORMAT = "longssm-eval/1"
CSV_COLUMNS = (
    "run", "protocol", "length", "loss", "loss_low", "loss_high", "delta_prev", "delta_prev_low",
    "delta_prev_high", "perplexity", "bits_per_byte", "n_tokens", "n_windows", "rows",
    "windows_per_row", "start",
)


def machine_info() -> dict:
    """Where the numbers were measured: host, CPU count, threads, versions, device."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def make_results(
    records: list[dict],
    *,
    run: str,
    checkpoint: str = "",
    model_config: dict | None = None,
    train_length: int | None = None,
    policy: str | None = None,
    settings: dict | None = None,
    classification: dict | None = None,
    positions: list[dict] | None = None,
    effrem: dict | None = None,
) -> dict:
    """Assemble the JSON document (see the module docstring). ``settings`` are stored as given."""
    protocols = list(dict.fromkeys(r["protocol"] for r in records))
    lengths = sorted({r["length"] for r in records})
    return {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run,
        "checkpoint": checkpoint,
        "model_config": model_config or {},
        "train_length": train_length,
        "policy": policy,
        "protocols": protocols,
        "lengths": lengths,
        "settings": settings or {},
        "machine": machine_info(),
        "records": records,
        "classification": classification or {},
        "positions": positions or [],
        "effrem": effrem,
    }


def free_stem(out_dir: Path, name: str, force: bool = False) -> Path:
    """``out_dir/name`` if neither ``.json`` nor ``.csv`` exists (or ``force``), else the first
    free ``name-2``, ``name-3``, ..."""
    def taken(stem: Path) -> bool:
        return stem.with_name(stem.name + ".json").exists() or stem.with_name(stem.name + ".csv").exists()

    stem = out_dir / name
    i = 2
    while not force and taken(stem):
        stem = out_dir / f"{name}-{i}"
        i += 1
    return stem


def save_results(results: dict, out_dir, name: str = "results", force: bool = False) -> tuple[Path, Path]:
    """Write ``{name}.json`` and ``{name}.csv`` into ``out_dir``.

    Returns:
        (json_path, csv_path). Existing files are kept unless ``force``: a free stem
        ``{name}-2``, ``{name}-3``, ... is used instead.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(out, name, force)
    json_path, csv_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".csv")
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    # non-finite losses (a blown-up model) are written as Infinity/NaN, which json reads back
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, json_path)
    write_csv(results["records"], csv_path, run=results.get("run", ""))
    return json_path, csv_path


def write_csv(records: list[dict], path, run: str = "") -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({"run": run, **r})


def read_csv(path) -> list[dict]:
    """Records back from a CSV (numbers parsed)."""
    ints = {"length", "n_tokens", "n_windows", "rows", "windows_per_row", "start"}
    floats = {"loss", "loss_low", "loss_high", "delta_prev", "delta_prev_low", "delta_prev_high",
              "perplexity", "bits_per_byte"}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k in ints & row.keys():
            row[k] = int(row[k])
        for k in floats & row.keys():
            # an empty cell: no interval (older results) or no previous length
            row[k] = float(row[k]) if row[k] != "" else None
    return rows


def load_results(path) -> dict:
    """A results document from a JSON file; ``EvalError`` if missing or not longssm results."""
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"no such results file: {p}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EvalError(f"{p} is not a longssm evaluation results file (format {FORMAT})")
    data["path"] = str(p)
    return data


def find_results(paths) -> list[dict]:
    """Load results from files and directories (every ``*.json`` results file directly inside)."""
    found = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(p.glob("*.json"))
            if not files:
                raise EvalError(f"no results JSON in directory {p}")
            found.extend(load_results(f) for f in files)
        else:
            found.append(load_results(p))
    if not found:
        raise EvalError("no results given")
    return found


def records_of(results: dict, protocol: str | None = None) -> list[dict]:
    """The records of one protocol (all if None), sorted by length."""
    rows = [r for r in results["records"] if protocol is None or r["protocol"] == protocol]
    return sorted(rows, key=lambda r: r["length"])
