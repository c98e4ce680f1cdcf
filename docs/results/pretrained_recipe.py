"""Regenerate docs/results/pretrained.md: post-train a Hugging Face Mamba directory with carried state.

    PYTHONPATH=src python docs/results/pretrained_recipe.py      # about 1.5 minutes on 2 cores

Every step is a ``longssm`` command (run through ``longssm.cli.main``), timed:

1. pretrain a small byte-level Mamba with zero-initialised states on python-stdlib (T = 16);
2. write its corpus splits as Parquet files (train/validation/test.parquet: the same documents in
   the same order, so the token streams are identical) - the "bring your own data" step;
3. ``longssm export RUN --hf OUT``: the checkpoint as a transformers directory;
4. ``longssm train --init-from OUT`` on the Parquet corpus with ``passing``, ``fitted-noise`` and
   ``previous`` (and with ``zero``: the control that separates the policy from the extra steps);
5. ``longssm eval --tensorboard`` of the untouched HF directory and the post-trained runs,
   L = 16 ... 32768, reset protocol, 95% paired block-bootstrap intervals (65536 scored targets
   per L: two windows at L = 32768; the evaluation is constant-memory, chunks of 1024 tokens).
Writes pretrained.md and pretrained.json beside this script; runs go to results/pretrained/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from longssm.cli import main
from longssm.data import ByteTokenizer, load_corpus
from longssm.eval.intervals import bootstrap_indices, percentile_interval, record_replicates

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "results" / "pretrained"
PRETRAIN = ["--model.mixer=mamba", "--model.d_model=64", "--model.n_layers=2", "--model.d_conv=4",
            "--train.policy=zero", "--data.seq_len=16", "--data.tokens_per_step=2048",
            "--train.steps=300", "--train.threads=1", "--train.checkpoint_every=100"]
POST_STEPS = 200
POST = ["--data.seq_len=16", "--data.tokens_per_step=2048", f"--train.steps={POST_STEPS}",
        "--train.lr=1e-3", "--train.warmup_steps=20", "--train.threads=1",
        "--train.checkpoint_every=100", "--train.tensorboard=true"]
POLICIES = ("zero", "passing", "fitted-noise", "previous")
EVAL = ["--lengths", "16:32768", "--protocol", "reset", "--n-tokens", "65536", "--device", "cpu",
        "--no-progress", "--force", "--tensorboard"]


def step(name: str, args: list[str], times: dict) -> None:
    print(f"$ longssm {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    code = main(args)
    times[name] = round(time.perf_counter() - t0, 1)
    if code != 0:
        sys.exit(f"{name} failed with exit code {code}")


def write_parquet(folder: Path) -> None:
    """python-stdlib's three splits as Parquet rows, one document per row, in stored order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        corpus = load_corpus("python-stdlib", ByteTokenizer(), split)
        tokens = np.asarray(corpus.tokens)
        bounds = list(corpus.doc_starts) + [len(tokens)]
        texts = [bytes(tokens[a + 1:b].astype(np.uint8)).decode("utf-8", "replace")
                 for a, b in zip(bounds[:-1], bounds[1:])]  # fmt: skip
        pq.write_table(pa.table({"text": texts}), folder / f"{split}.parquet")


def paired(eval_dir: Path, names: list[str], lengths=(16, 1024, 32768)) -> dict:
    """Loss differences between models at the same L, each with its 95% interval from ONE block
    bootstrap applied to both models (they score the same targets in the same blocks)."""
    records = {n: {r["length"]: r for r in json.loads((eval_dir / f"{n}.json").read_text())[
        "records"]} for n in names}  # fmt: skip
    n_blocks = len(records[names[0]][lengths[0]]["block_tokens"])
    indices = bootstrap_indices(n_blocks, seed=0)
    out = {}
    for name in names[1:]:
        for base in ("untouched", "zero"):
            if base == name or base not in records:
                continue
            for L in lengths:
                a, b = records[name][L], records[base][L]
                if a["block_tokens"] != b["block_tokens"]:
                    sys.exit(f"{name} and {base} did not score the same targets at L={L}")
                diff = record_replicates(a, indices) - record_replicates(b, indices)
                low, high = percentile_interval(diff)
                out[f"{name} - {base} @ {L}"] = [a["loss"] - b["loss"], low, high]
    return out


def curve(results_path: Path) -> list[dict]:
    records = json.loads(results_path.read_text())["records"]
    return [{k: r[k] for k in ("length", "loss", "loss_low", "loss_high")} for r in records]


def findings(summary: dict) -> str:
    """One sentence per policy: its paired gap to the zero control at the longest length."""
    longest = max(r["length"] for r in summary["curves"]["untouched"])
    parts = []
    for policy in POLICIES[1:]:
        d, lo, hi = summary["paired"][f"{policy} - zero @ {longest}"]
        verdict = "lower than" if hi < 0 else "higher than" if lo > 0 else "not different from"
        parts.append(f"`{policy}` is {verdict} `zero` ({d:+.4f} [{lo:+.4f}, {hi:+.4f}])")
    return "; ".join(parts) + "."


def render(summary: dict) -> str:
    names = list(summary["curves"])
    lines = ["| L | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(summary["curves"][names[0]]):
        cells = [f"{c[i]['loss']:.4f} [{c[i]['loss_low']:.4f}, {c[i]['loss_high']:.4f}]"
                 for c in summary["curves"].values()]  # fmt: skip
        lines.append(f"| {row['length']} | " + " | ".join(cells) + " |")
    verdicts = [f"- **{n}**: {v}" for n, v in summary["verdicts"].items()]
    diffs = [f"| {k.replace(' @ ', ' | ')} | {d:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
             for k, (d, lo, hi) in summary["paired"].items()]  # fmt: skip
    times = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    total = sum(summary["seconds"].values())
    return "\n".join([
        "# Post-training a Hugging Face Mamba with carried state (measured)",
        "",
        "Made by `PYTHONPATH=src python docs/results/pretrained_recipe.py` (recipe:",
        "[docs/pretrained.md](../pretrained.md)). A 2-layer byte-level Mamba (d_model 64, d_conv",
        "4, 82k parameters) pretrained 300 steps at T = 16 with zero-initialised states on",
        "python-stdlib, exported with `longssm export --hf`, then post-trained from that",
        f"directory for {POST_STEPS} steps on the same corpus read from Parquet with each policy",
        "(`zero` is the control). Test-split loss (nats/byte) per evaluation length L, reset",
        "protocol (every window starts from a zero state), 65,536 scored targets per L (the same",
        "text at every L), with 95% paired block-bootstrap intervals.",
        "",
        *lines,
        "",
        "Verdicts (Definition 2.1 over L >= 16, decided from paired intervals):",
        "",
        *verdicts,
        "",
        "Paired differences (row model minus the compared one, nats/byte, 95% interval of one",
        "block bootstrap applied to both: they score the same targets; an interval excluding 0",
        "is a difference, one including 0 is none):",
        "",
        "| difference | L | loss difference [95%] |",
        "|---|---|---|",
        *diffs,
        "",
        f"Wall times on this machine (2 CPU cores shared with other jobs): {times}; total",
        f"{total:.0f} s.",
        "",
        "What carries over at CPU scale: the `zero` column is the control (the same extra steps,",
        "zero-initialised states), so a policy's effect is its paired gap to `zero`, not to the",
        "untouched checkpoint. The per-column intervals are not paired with each other (each is a",
        "block bootstrap of one model; the text varies more than the models), so overlapping",
        "columns are not a verdict; the paired differences are. At L = 32768: " + findings(summary),
        "The paper's setting (Mamba-130m and up, post-trained at 2k and evaluated to 128k) is four",
        "orders of magnitude larger; here the untouched model already does not degrade with L",
        "(its curve flattens after L = 512; verdict none only because it rises slightly again),",
        "so the test is the level reached at long L, not a rescue from divergence.",
        "",
    ])


def run() -> dict:
    os.environ.setdefault("LONGSSM_CACHE", str(OUT / "cache"))
    if (OUT / "runs").exists():
        shutil.rmtree(OUT / "runs")
    runs, times = OUT / "runs", {}
    step("pretrain", ["train", "--out", str(runs / "pretrain"), "--quiet", *PRETRAIN], times)
    t0 = time.perf_counter()
    write_parquet(OUT / "parquet")
    times["parquet"] = round(time.perf_counter() - t0, 1)
    hf = runs / "hf"
    step("export", ["export", str(runs / "pretrain"), "--hf", str(hf)], times)
    for policy in POLICIES:
        step(f"post-train {policy}", ["train", "--init-from", str(hf), "--out", str(runs / policy),
             "--quiet", f"--data.corpus={OUT / 'parquet'}", f"--train.policy={policy}", *POST],
             times)  # fmt: skip
    curves, verdicts = {}, {}
    for name, source in (("untouched", hf), *((p, runs / p) for p in POLICIES)):
        extra = ["--corpus", str(OUT / "parquet")] if name == "untouched" else []
        step(f"eval {name}", ["eval", str(source), *EVAL, "--out", str(OUT / "eval"),
                              "--name", name, *extra], times)  # fmt: skip
        results = json.loads((OUT / "eval" / f"{name}.json").read_text())
        curves[name] = curve(OUT / "eval" / f"{name}.json")
        v = results["classification"].get("reset", {})
        verdicts[name] = (f"{v.get('kind')}: change to L={v.get('l_max')} {v.get('change', 0):+.4f} "
                          f"[{v.get('change_low', 0):+.4f}, {v.get('change_high', 0):+.4f}]")
    return {"curves": curves, "verdicts": verdicts,
            "paired": paired(OUT / "eval", ["untouched", *POLICIES]), "seconds": times}


if __name__ == "__main__":
    summary = run()
    (HERE / "pretrained.json").write_text(json.dumps(summary, indent=1) + "\n")
    (HERE / "pretrained.md").write_text(render(summary))
    print(render(summary))
