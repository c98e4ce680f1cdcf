"""The library side of ``longssm analyze attention | reliance | prophecy``: each writes a JSON file and
a figure drawn from it (``fig.png`` and ``fig.json``).

Every input is checked before anything is computed or written: a bad run path, a layer out of
range, a text longer than ``max_length``, an unknown measure or signal raise ``ValueError`` with one
line (the CLI turns it into ``longssm: error: ...`` and exit code 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from longssm import hippo
from longssm.analysis import figures
from longssm.analysis.attention import check_layer, hidden_attention, minmax
from longssm.analysis.prophecy import SIGNALS, forecast_errors
from longssm.analysis.reliance import state_reliance

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def _check_out(out) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"--out must end in one of {', '.join(FIGURE_SUFFIXES)}, got {str(out)!r}")
    return out, out.with_suffix(".json")


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _load(run):
    from longssm.checkpoint import load_model
    from longssm.data import tokenizer_from_dict

    if not Path(run).exists():
        raise ValueError(f"no such run or checkpoint: {run}")
    model, _, meta = load_model(run)
    tokenizer = tokenizer_from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
    return model, meta, tokenizer


def _split_tokens(meta: dict, tokenizer, split: str) -> np.ndarray:
    from longssm.data import load_corpus

    data = meta["config"].get("data", {})
    corpus = load_corpus(data.get("corpus", "python-stdlib"), tokenizer, split=split,
                         cache_dir=data.get("cache_dir") or None)
    return np.asarray(corpus.tokens)


def _label(meta: dict, run) -> str:
    train = meta["config"].get("train", {})
    return f"{train.get('policy', '?')} ({Path(run).name}, {meta['config']['model'].get('mixer')})"


def _attention_tokens(model, meta, tokenizer, text, split, offset, max_length, warmup):
    """(tokens (1, L), carried state or None, token strings)."""
    if (text is None) == (split is None):
        raise ValueError("give exactly one of --text and --from-split")
    if text is not None:
        if tokenizer is None:
            raise ValueError("this run was trained on symbols, not text: use --from-split")
        ids = list(tokenizer.encode(text))
        if len(ids) > max_length:
            raise ValueError(f"the text has {len(ids)} tokens, more than --max-length {max_length}")
        if not ids:
            raise ValueError("the text is empty")
        if warmup:
            raise ValueError("--warmup needs --from-split (the tokens before the window)")
        tokens, state = torch.tensor([ids]), None
    else:
        stream = _split_tokens(meta, tokenizer, split)
        if offset < warmup or offset + max_length > len(stream):
            raise ValueError(f"--offset {offset} with --warmup {warmup} and --max-length {max_length} "
                             f"does not fit the {split} split ({len(stream)} tokens)")
        tokens = torch.from_numpy(stream[offset : offset + max_length].astype(np.int64))[None]
        state = None
        if warmup:
            with torch.no_grad():
                _, state = model(torch.from_numpy(stream[offset - warmup : offset].astype(np.int64))[None])
    labels = [tokenizer.decode([int(i)]) if tokenizer is not None else str(int(i)) for i in tokens[0]]
    return tokens, state, labels


def analyze_attention(run, out, text=None, split=None, layer=None, kind="scan", max_length=256,
                      channels=(), offset=0, warmup=0) -> dict:
    """Hidden-attention heatmaps of a trained run (every layer, or ``layer``): figure + JSON."""
    fig_path, json_path = _check_out(out)
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"--max-length must be a positive integer, got {max_length!r}")
    model, meta, tokenizer = _load(run)
    layers = range(len(model.blocks)) if layer is None else [check_layer(model, layer)]
    tokens, state, labels = _attention_tokens(model, meta, tokenizer, text, split, offset, max_length, warmup)
    result = dict(run=str(run), label=_label(meta, run), kind=kind, tokens=labels, carried_state=state is not None,
                  layers=[])
    for k in layers:
        maps = hidden_attention(model, tokens, k, state, kind, channels=channels)
        result["layers"].append(dict(
            layer=k, units=maps["units"], mimo=maps["mimo"],
            mean=minmax(maps["mean"][0]).tolist(), max=minmax(maps["max"][0]).tolist(),
            channels={str(c): minmax(m[0].abs()).tolist() for c, m in maps["channels"].items()},
            state_share=maps["state_share"][0].tolist(),
        ))
    _write_json(json_path, result)
    figures.attention_figure(result, fig_path)
    return result


def _reliance_rows(model, stream: np.ndarray, length: int, rows: int, positions, batch: int = 4):
    """Ratios (n_layers, rows, P) under the stream protocol: the L tokens before each window are
    run from zeros and their final state is carried into the window."""
    starts = np.linspace(length, len(stream) - length - 1, rows).astype(np.int64)
    parts = []
    for i in range(0, rows, batch):
        s = starts[i : i + batch]
        warm = torch.from_numpy(np.stack([stream[a - length : a] for a in s]).astype(np.int64))
        window = torch.from_numpy(np.stack([stream[a : a + length] for a in s]).astype(np.int64))
        with torch.no_grad():
            _, state = model(warm)
        parts.append(state_reliance(model, window, state, positions)["ratio"])
    return torch.cat(parts, dim=1)


def analyze_reliance(runs, out, lengths=(1, 16, 256, 4096), rows=16, split="test", progress=True) -> dict:
    """State reliance of each run per layer at positions t (1-based), stream protocol: figure + JSON."""
    fig_path, json_path = _check_out(out)
    lengths = sorted({int(t) for t in lengths})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"--lengths must be positive positions t >= 1, got {lengths}")
    if not isinstance(rows, int) or rows < 2:
        raise ValueError(f"--rows must be an integer >= 2 (for a spread), got {rows!r}")
    loaded = [(run, *_load(run)) for run in runs]
    L = lengths[-1]
    grid = sorted(set(lengths) | {2**k for k in range(L.bit_length()) if 2**k <= L})
    result = dict(protocol="stream", split=split, rows=rows, length=L, positions=grid, reported=lengths, runs=[])
    from tqdm.auto import tqdm

    for run, model, meta, tokenizer in tqdm(loaded, desc="reliance", disable=not progress):
        stream = _split_tokens(meta, tokenizer, split)
        if len(stream) < 2 * L + rows:
            raise ValueError(f"the {split} split of {run} has {len(stream)} tokens, too few for L={L}")
        ratio = _reliance_rows(model, stream, L, rows, [t - 1 for t in grid]).numpy()  # (layers, rows, P)
        layers = []
        for k, per_row in enumerate(ratio):
            mean = per_row.mean(0)
            lo, hi = np.percentile(_bootstrap_means(per_row), [2.5, 97.5], axis=0)
            layers.append(dict(layer=k, mean=mean.tolist(), low=lo.tolist(), high=hi.tolist()))
        result["runs"].append(dict(run=str(run), label=_label(meta, run), layers=layers))
    _write_json(json_path, result)
    figures.reliance_figure(result, fig_path)
    return result


def _bootstrap_means(per_row: np.ndarray, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """(draws, P) means over rows resampled with replacement (a 95% interval over text windows)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_row.shape[0], size=(draws, per_row.shape[0]))
    return per_row[idx].mean(1)


def analyze_prophecy(out, signal="damped", sizes=(8, 16, 32, 64), dts=(0.01, 0.02, 0.05), theta=1.0,
                     measure="legt", replicates=8, progress=True) -> dict:
    """One-step forecast error of the HiPPO-Prophecy SSM vs N and Δ, against persistence."""
    fig_path, json_path = _check_out(out)
    if signal not in SIGNALS:
        raise ValueError(f"unknown signal {signal!r}; valid: {', '.join(SIGNALS)}")
    if not isinstance(replicates, int) or replicates < 2:
        raise ValueError(f"--replicates must be an integer >= 2, got {replicates!r}")
    for n in sizes:
        hippo.derivative_readout(measure, n, theta)  # unknown measure, bad N or θ: before any output
    if not sizes or not dts or not all(0 < dt < theta for dt in dts):
        raise ValueError(f"--N and --dt must be non-empty, each Δ in (0, θ={theta}), got {list(dts)}")
    from tqdm.auto import tqdm

    with tqdm(total=len(sizes) * len(dts), desc="prophecy", disable=not progress) as bar:
        rows = forecast_errors(signal, list(sizes), list(dts), theta, measure, replicates, progress=bar)
    result = dict(signal=signal, measure=measure, theta=theta, replicates=replicates, rows=rows)
    _write_json(json_path, result)
    figures.prophecy_figure(result, fig_path)
    return result
