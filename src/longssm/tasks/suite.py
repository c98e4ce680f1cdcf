"""``longssm task NAME`` and ``longssm task suite``: one run, or the matrix tasks x mixers x depths.

Every run writes its record (``trainer.run``) to JSON; the suite writes all records to
``tasks.json``, the table to ``tasks.md`` and heatmaps (``tasks-accuracy.png``,
``tasks-nmse.png``), all drawn from the records. Controls that another build registers
(``mamba+negative_eigenvalues=true``, ``ids4+act=identity+init=identity``) are listed in the matrix and reported as skipped
when this build's registry does not know them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

from longssm.tasks.registry import get_task
from longssm.tasks.report import heatmap, min_depth_table, per_length_table, seed_table, table
from longssm.tasks.trainer import (
    TaskRunConfig,
    check_config,
    check_lengths,
    default_bins,
    parse_mixer,
    parse_range,
    run,
)

QUICK = {"d_model": 32, "d_state": 16, "batch_size": 32, "eval_samples": 100}
CONTROLS = ["mamba+negative_eigenvalues=true", "ids4+act=identity+init=identity"]
GROUP_TASKS = ["a5", "z60", "a4xz5"]
GROUP_SETTINGS = {"steps": 3000, "d_model": 64}
"""Word problems need more: at 600 steps of d_model 32 no mixer got past k = 1 (a copy); an LSTM
learns Z60 and A4xZ5 in distribution with 3000 steps at d_model 64 (docs/results/tasks.md)."""

# (tasks, mixers, depths, settings, train lengths, bins or None for default_bins); settings are
# TaskRunConfig fields (steps, lr, d_model, ...) and "seeds": seed offsets (one run each)
QUICK_MATRIX = [
    (["starfree", "flipflop", "parity", "d2", "dyck1", "anbn"], ["mamba"], [1, 2],
     {"steps": 500}, (1, 20), None),
    (["flipflop"], ["mamba"], [2], {"steps": 1500}, (1, 20), None),
    (["parity", "flipflop"], ["lstm"] + CONTROLS, [1], {"steps": 500}, (1, 20), None),
    (GROUP_TASKS, ["mamba"], [1, 2, 3], GROUP_SETTINGS, (1, 10), None),
    (GROUP_TASKS, ["lstm"] + CONTROLS, [1], GROUP_SETTINGS, (1, 10), None),
    (["mem-polynomial", "mem-exp"], ["s4d+eigen=exp", "s4d+eigen=direct"], [1], {"steps": 500},
     (1, 20), None),
    (["mem-polynomial"], ["s4d+eigen=exp", "s4d+eigen=direct"], [1],
     {"steps": 500, "lr": 3e-2, "seeds": [0, 1, 2]}, (1, 20), None),
    (["area"], ["mamba", "s4d"], [1, 2], {"steps": 500}, (1, 20), None),
    (["mqar"], ["mamba"], [2], {"steps": 600}, (3, 24), [(3, 24), (27, 48), (51, 96), (99, 192)]),
    (["passkey"], ["mamba"], [2], {"steps": 500}, (3, 20), None),
]


def run_task(name: str, mixer: str = "mamba", layers: int = 2, train_lengths: str = "1:50",
             test_lengths: str | None = None, quick: bool = False, steps: int | None = None,
             seed: int = 0, out: str | None = None, progress: bool = True,
             **training) -> dict:
    """Train and evaluate one task; print its table; write the record to ``out`` (JSON).

    ``training``: further ``TaskRunConfig`` fields (policy, segments, protocols, run_dir, ...)."""
    task = get_task(name)
    train = parse_range(train_lengths, "--train-lengths")
    bins = ([parse_range(b, "--test-lengths bin") for b in test_lengths.split(",")]
            if test_lengths else default_bins(*train))
    check_lengths(task, train, bins)
    parse_mixer(mixer)
    path = Path(out or f"results/tasks/{name}-{mixer.replace('+', '_')}-x{layers}.json")
    if path.exists():
        raise ValueError(f"{path} exists; choose another --out (nothing is overwritten)")
    cfg = TaskRunConfig(task=name, mixer=mixer, layers=layers, train_lengths=train,
                        test_bins=bins, seed=seed, progress=progress,
                        **(QUICK if quick else {}), **training)
    cfg.steps = steps or (500 if quick else cfg.steps)
    check_config(task, cfg)
    record = run(cfg)
    print(f"{name} ({record['metric']}, {cfg.protocols[0]} protocol, 95% interval; train loss "
          f"{record['train']['final_loss']:.4f}, {record['train']['seconds']:.0f} s)")
    print(table([record]))
    for protocol, bins in list(record["protocols"].items())[1:]:
        print(f"{protocol} protocol (segments of {cfg.eval_segment or train[1]}):")
        print(table([{**record, "bins": bins}]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=_json))
    return record


def _json(obj):
    return None if isinstance(obj, float) and not math.isfinite(obj) else str(obj)


def suite_configs(quick: bool = True, seed: int = 0) -> list[TaskRunConfig]:
    """The matrix as run configs, in order."""
    base = TaskRunConfig(task="", seed=seed, progress=False, **(QUICK if quick else {}))
    out = []
    for tasks, mixers, depths, settings, train, bins in QUICK_MATRIX:
        settings = dict(settings)
        offsets = settings.pop("seeds", [0])
        if not quick:
            settings["steps"] *= 4
        for name in tasks:
            for mixer in mixers:
                for depth in depths:
                    for offset in offsets:
                        out.append(replace(base, task=name, mixer=mixer, layers=depth,
                                           seed=seed + offset, **settings, train_lengths=train,
                                           test_bins=list(bins or default_bins(*train))))
    return out


def run_suite(out_dir: str = "docs/results", quick: bool = True, seed: int = 0) -> list[dict]:
    """Run the matrix; write tasks.json, tasks.md and the heatmaps under ``out_dir``.

    Records finished so far go to ``tasks.partial.json`` after each run; ``tasks.json`` is
    replaced only when the whole matrix is done, so that an interrupted suite never leaves a
    partial data file beside the previous complete page (as it once did: 8 of 53 records)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "tasks.partial.json"
    records, skipped, start = [], [], time.perf_counter()
    for cfg in tqdm(suite_configs(quick, seed), desc="task suite"):
        try:
            parse_mixer(cfg.mixer)
        except ValueError as exc:
            skipped.append({"task": cfg.task, "mixer": cfg.mixer, "layers": cfg.layers,
                            "reason": str(exc)})
            continue
        records.append(run(cfg))
        partial.write_text(
            json.dumps({"records": records, "skipped": skipped}, indent=1, default=_json))
    seconds = time.perf_counter() - start
    partial.write_text(json.dumps(
        {"records": records, "skipped": skipped, "seconds": seconds}, indent=1, default=_json))
    partial.replace(out / "tasks.json")
    heatmap(records, str(out / "tasks-accuracy.png"), "accuracy")
    heatmap(records, str(out / "tasks-nmse.png"), "nmse")
    (out / "tasks.md").write_text(_page(records, skipped, seconds, quick))
    print(table(records))
    return records


def _page(records: list[dict], skipped: list[dict], seconds: float, quick: bool) -> str:
    lines = [
        "# Synthetic capability suite: results",
        "",
        f"Made by `longssm task suite{' --quick' if quick else ''} --out docs/results` "
        f"({seconds / 60:.1f} min, {len(records)} runs). Data: `tasks.json`; "
        "what the tasks are and the published numbers: [../tasks.md](../tasks.md).",
        "",
        "Accuracy in % with a 95% interval, in the task's unit: *sequence* (a string is right when "
        "every scored position is right; Wilson interval) for the formal languages and recall; "
        "*position* for flip-flop (accuracy of the read positions, Liu et al.) and the word "
        "problems (accuracy of the running product averaged over the lengths k of the bin, "
        "Merrill et al.), with a bootstrap interval over sequences; `tasks.json` keeps both units "
        "for every accuracy run. Regression: normalised MSE with a 95% bootstrap interval. The "
        "first bin is the training range, the others lie beyond it (reset protocol: zero initial "
        "state).",
        "",
        table(records, markdown=True),
        "",
        "![accuracy heatmap](tasks-accuracy.png)",
        "",
        "![nMSE heatmap](tasks-nmse.png)",
        "",
    ]
    sections = [
        ("Word problems: accuracy at each length k (training range)",
         "The running product of the first k elements, % with the 95% Wilson interval over "
         "the evaluated words.", per_length_table(records)),
        ("Word problems: the smallest depth reaching 90% at each k",
         "Among the depths run; '-': none reaches 90%; '?': the Wilson intervals do not settle "
         "the call. Merrill et al. train one model per k; here one model per depth is trained on "
         "all k of the training range and read at each k.", min_depth_table(records)),
        ("Runs repeated over seeds", "Mean (min-max over seeds) of each bin's value; max Re λ: "
         "the continuous eigenvalue closest to the stability boundary 0 after training "
         "(`direct` is clipped at -1e-4).", seed_table(records)),
    ]
    for title, note, body in sections:
        if body:
            lines += [f"## {title}", "", note, "", body, ""]
    if skipped:
        lines += ["Skipped (not registered in this build):", ""]
        lines += [f"- {s['task']} {s['mixer']} x{s['layers']}: {s['reason']}" for s in skipped]
        lines.append("")
    return "\n".join(lines)
