"""The three capability gaps of issue 15, re-measured over 3 seeds: IDS4 on the word problems
(the old and the fixed layer), MQAR capacity, and the Mamba minimum depth at each k.

    PYTHONPATH=src python docs/results/tasks_gaps.py            # all parts, ~25 min on 2 cores
    PYTHONPATH=src python docs/results/tasks_gaps.py ids4 mqar  # some parts
    PYTHONPATH=src python docs/results/tasks_gaps.py depth-a5 & ... depth-z60  # side by side

Writes docs/results/tasks-gaps.json (every run: bins, per-k accuracy; runs already there are not
repeated) and docs/results/tasks-gaps.md (tables drawn from the JSON). Spread: mean (min-max)
over the seeds; each run's own 95% interval is in the JSON.
"""

from __future__ import annotations

import fcntl
import json
import sys
import time
from pathlib import Path

import numpy as np

from longssm.tasks import TaskRunConfig, run

OUT = Path(__file__).parent
SEEDS = (0, 1, 2)
GROUP_BINS = [(1, 12), (13, 24), (25, 48), (49, 120)]
MQAR_BINS = [(3, 24), (27, 48), (51, 96), (99, 192)]
DEPTHS = (1, 2, 3, 4)
DEPTH_STEPS = 6000

# part -> list of (label, TaskRunConfig kwargs without seed)
PARTS = {
    "ids4": [
        (f"{task} {mixer} x1", dict(task=task, mixer=mixer, layers=1, d_model=64, d_state=16,
                                    steps=2000, train_lengths=(1, 12), test_bins=GROUP_BINS))
        for task in ("a5", "z60")
        for mixer in ("ids4", "ids4+init=identity", "ids4+act=identity+init=identity")
    ],
    "mqar": [
        ("mqar mamba x2 d32 N16 600@3e-3 (suite)",
         dict(task="mqar", mixer="mamba", layers=2, d_model=32, d_state=16, steps=600,
              train_lengths=(3, 24), test_bins=MQAR_BINS)),
        ("mqar block-attention x2 d64 1500@3e-3",
         dict(task="mqar", mixer="block-attention", layers=2, d_model=64, steps=1500,
              train_lengths=(3, 24), test_bins=MQAR_BINS)),
        ("mqar mamba x2 d64 N32 1500@3e-3",
         dict(task="mqar", mixer="mamba", layers=2, d_model=64, d_state=32, steps=1500,
              train_lengths=(3, 24), test_bins=MQAR_BINS)),
    ],
}
# Mamba depth sweep, one part per task so that the two run side by side (one core each).
for _task in ("a5", "z60"):
    PARTS[f"depth-{_task}"] = [
        (f"{_task} mamba x{depth}", dict(task=_task, mixer="mamba", layers=depth, d_model=64,
                                         d_state=16, steps=DEPTH_STEPS, train_lengths=(1, 12),
                                         test_bins=GROUP_BINS[:2]))
        for depth in DEPTHS
    ]


def run_part(part: str, results: dict, path: Path) -> None:
    for label, kwargs in PARTS[part]:
        for seed in SEEDS:
            key = f"{label} seed {seed}"
            if key in results:
                continue
            t0 = time.time()
            rec = run(TaskRunConfig(seed=seed, eval_samples=100, progress=False, **kwargs))
            results[key] = {"part": part.split("-")[0], "label": label, "seed": seed,
                            "seconds": round(time.time() - t0, 1), "config": rec["config"],
                            "bins": rec["bins"]}
            save(path, key, results[key])
            print(key, [round(100 * b["value"], 1) for b in rec["bins"]], flush=True)


def save(path: Path, key: str, record: dict) -> None:
    """Add one run to the JSON under a lock (parts may run in parallel processes)."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.exists() else {}
        current[key] = record
        path.write_text(json.dumps(current, indent=1))


def part_runs(part: str) -> list[tuple[str, dict]]:
    """The (label, kwargs) of a part, or of all its sub-parts ("depth" -> depth-a5, depth-z60)."""
    return [run for key, runs in PARTS.items() if key == part or key.startswith(part + "-")
            for run in runs]


def spread(values) -> str:
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ({v.min():.1f}-{v.max():.1f})"


def runs_of(results: dict, label: str) -> list[dict]:
    return [r for r in results.values() if r["label"] == label]


def bin_table(results: dict, part: str) -> list[str]:
    labels = [label for label, _ in part_runs(part) if runs_of(results, label)]
    if not labels:
        return []
    bins = runs_of(results, labels[0])[0]["bins"]
    head = " | ".join(f"{b['lo']}-{b['hi']}" for b in bins)
    lines = [f"| run | seeds | {head} |", "|---|---|" + "---|" * len(bins)]
    for label in labels:
        rs = runs_of(results, label)
        cells = " | ".join(spread([r["bins"][i]["value"] for r in rs]) for i in range(len(bins)))
        lines.append(f"| {label} | {len(rs)} | {cells} |")
    return lines


def per_k(rs: list[dict]) -> np.ndarray:
    """(seeds, k) accuracy at k = 1..12 (the training bin's per-length values)."""
    return np.array([[p["value"] for p in r["bins"][0]["per_length"]] for r in rs])


def per_k_table(results: dict, part: str) -> list[str]:
    labels = [label for label, _ in part_runs(part) if runs_of(results, label)]
    if not labels:
        return []
    ks = range(1, per_k(runs_of(results, labels[0])).shape[1] + 1)
    lines = ["| run | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for label in labels:
        acc = 100 * per_k(runs_of(results, label))
        cells = " | ".join(f"{m:.0f} ({lo:.0f}-{hi:.0f})" for m, lo, hi in
                           zip(acc.mean(0), acc.min(0), acc.max(0)))
        lines.append(f"| {label} | {cells} |")
    return lines


def min_depth_table(results: dict) -> list[str]:
    """Smallest depth whose seed-mean accuracy at k is >= 90% ('-': none)."""
    lines = []
    for task in ("a5", "z60"):
        depths = [d for d in DEPTHS if runs_of(results, f"{task} mamba x{d}")]
        if not depths:
            continue
        means = {d: per_k(runs_of(results, f"{task} mamba x{d}")).mean(0) for d in depths}
        ks = len(means[depths[0]])
        if not lines:
            lines = ["| task | depths | " + " | ".join(f"k={k}" for k in range(1, ks + 1)) + " |",
                     "|---|---|" + "---|" * ks]
        cells = [next((str(d) for d in depths if means[d][k] >= 0.9), "-") for k in range(ks)]
        lines.append(f"| {task} | {depths[0]}-{depths[-1]} | " + " | ".join(cells) + " |")
    return lines


def report(results: dict) -> str:
    out = ["# Issue 15: the three gaps (seeds 0-2 where the seeds column says 3)",
           "", "Made by `PYTHONPATH=src python docs/results/tasks_gaps.py` (data: "
           "[tasks-gaps.json](tasks-gaps.json)). Cells: mean (min-max) over seeds 0-2, in %. "
           "Word problems: position accuracy (running product averaged over the k of the bin); "
           "MQAR: per-query accuracy (Zoology's metric). Analysis: [../tasks.md](../tasks.md).",
           "", "## IDS4 on the word problems (1 layer, d_model 64, N = 16, 2000 steps @ 3e-3, "
           "train k = 1-12)", ""]
    out += bin_table(results, "ids4") + ["", "Accuracy at each k (training range):", ""]
    out += per_k_table(results, "ids4")
    out += ["", "## MQAR (train lengths 3-24, i.e. 1-8 pairs; k = n/3 pairs)", ""]
    out += bin_table(results, "mqar")
    out += ["", f"## Mamba depth on the word problems (d_model 64, N = 16, {DEPTH_STEPS} steps "
            "@ 3e-3, train k = 1-12)", ""]
    if not any(r["part"] == "depth" for r in results.values()):
        return "\n".join(out + ["", "Not run yet (the part was cut for time).", ""])
    out += bin_table(results, "depth") + ["", "Accuracy at each k (training range):", ""]
    out += per_k_table(results, "depth")
    out += ["", "Smallest depth whose seed-mean accuracy reaches 90% at k ('-': no depth run):",
            ""] + min_depth_table(results)
    return "\n".join(out) + "\n"


def main(parts: list[str]) -> None:
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"unknown part(s) {bad}; known: {list(PARTS)}")
    path = OUT / "tasks-gaps.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for part in parts or list(PARTS):
        run_part(part, results, path)
    results = json.loads(path.read_text()) if path.exists() else results
    (OUT / "tasks-gaps.md").write_text(report(results))


if __name__ == "__main__":
    main(sys.argv[1:])
