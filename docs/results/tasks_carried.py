"""Training policies and the carried protocol on flip-flop (the tagging trainer on train's policies).

    PYTHONPATH=src python docs/results/tasks_carried.py          # ~5 min on 2 busy cores

One Mamba layer learns flip-flop with every training sequence cut into 2 segments (one optimiser
step each): ``zero`` starts the second segment from zeros (it cannot know a write made in the
first), ``previous`` from the first segment's final state (detached: truncated BPTT, the LongSSM
policy). Every model is scored under both protocols: ``reset`` (one pass from zeros) and
``carried`` (segments of the top training length, state carried), on the same sequences. Writes
``tasks-carried.json`` and ``tasks-carried.md`` beside this script.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from longssm.tasks import TaskRunConfig, run

HERE = Path(__file__).resolve().parent
POLICIES = ["zero", "previous"]
SEEDS = [0, 1, 2]
BINS = [(4, 20), (21, 40), (41, 80), (81, 200)]
SETTINGS = dict(task="flipflop", mixer="mamba", layers=1, d_model=32, d_state=16, batch_size=32,
                eval_samples=100, train_lengths=(4, 20), test_bins=BINS, steps=500, segments=2,
                protocols=("reset", "carried"), progress=False)


def page(records: list[dict], seconds: float) -> str:
    lines = [
        "# Flip-flop: training policies over segments, reset vs carried evaluation", "",
        f"Made by `PYTHONPATH=src python docs/results/tasks_carried.py` ({seconds / 60:.1f} min). "
        "Data: `tasks-carried.json`. Mamba x1, d_model 32, 500 steps, train lengths 4-20, each "
        "training sequence in 2 segments; read accuracy (%), mean (min-max) over seeds "
        f"{SEEDS}; the first bin is the training range. `carried - reset`: the largest "
        "absolute difference between the two protocols over every seed and bin (same "
        "sequences).", "",
        "| policy | " + " | ".join(f"{lo}-{hi}" for lo, hi in BINS) + " | carried - reset |",
        "|---|" + "---|" * (len(BINS) + 1),
    ]
    for policy in POLICIES:
        runs = [r for r in records if r["config"]["policy"] == policy]
        cells = []
        for i in range(len(BINS)):
            v = 100 * np.array([r["protocols"]["reset"][i]["value"] for r in runs])
            cells.append(f"{v.mean():.1f} ({v.min():.1f}-{v.max():.1f})")
        gap = max(abs(a["value"] - b["value"]) for r in runs
                  for a, b in zip(r["protocols"]["reset"], r["protocols"]["carried"]))
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {100 * gap:.2g} pp |")
    return "\n".join(lines) + "\n"


def main() -> None:
    records, start = [], time.perf_counter()
    for policy in POLICIES:
        for seed in SEEDS:
            records.append(run(TaskRunConfig(policy=policy, seed=seed, **SETTINGS)))
            print(policy, seed, [round(b["value"], 3) for b in records[-1]["bins"]], flush=True)
    seconds = time.perf_counter() - start
    (HERE / "tasks-carried.json").write_text(json.dumps(
        {"records": records, "seconds": seconds}, indent=1, default=lambda o: None))
    (HERE / "tasks-carried.md").write_text(page(records, seconds))
    print(page(records, seconds))


if __name__ == "__main__":
    main()
