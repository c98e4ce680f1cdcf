"""Timing shared by the per-op benchmarks (``causal_conv.py``, ``step_size.py``, ``loss_norm.py``):
every case of a group runs once per round, rounds repeated (so machine noise hits all cases alike), summarised as
best / median / interquartile range; the run's machine facts, the JSON and page written, and the
scripts' common command line (``main``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import torch


def interleaved_times(steps: dict, repeats: int) -> dict:
    """Seconds of ``repeats`` calls of each step (one untimed warm-up call each first), the steps
    taking turns within every round: {key: [seconds, ...]}."""
    times = {key: [] for key in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return times


def summary(seconds: list[float]) -> dict:
    """best_ms, median_ms and iqr_ms ([first, third quartile]) of a list of seconds."""
    q = statistics.quantiles(seconds, n=4)
    return dict(
        best_ms=min(seconds) * 1e3,
        median_ms=statistics.median(seconds) * 1e3,
        iqr_ms=[q[0] * 1e3, q[2] * 1e3],
    )


def case_rows(groups, repeats: int) -> list[dict]:
    """Time each group's steps interleaved (``interleaved_times``): groups is a list of (case,
    {form: step}); one row per (case, form) with its ``summary``."""
    rows = []
    for case, steps in groups:
        for form, ts in interleaved_times(steps, repeats).items():
            rows.append(dict(case=case, form=form, **summary(ts)))
    return rows


def case_table(title: str, name: str, measured: str, result: dict) -> list[str]:
    """A page's title, how it was made (``measured``: what one call does) and its table of
    ``case_rows``, as markdown lines."""
    lines = [
        f"# {title}",
        "",
        f"Made by `PYTHONPATH=src python benchmarks/{name}.py` (data: "
        f"`benchmarks/results/{name}.json`). {measured}, float32, torch 1 thread, numba "
        f"{result['numba_threads']} threads; ms per call over {result['repeats']} interleaved "
        f"rounds; load average {result['load_before'][0]:.1f} before, "
        f"{result['load_after'][0]:.1f} after ({result['cpus']} CPUs, shared: the spread is "
        "the machine's).",
        "",
        "| case | form | best | median | IQR |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['form']} | {r['best_ms']:.2f} | {r['median_ms']:.2f} | "
            f"{r['iqr_ms'][0]:.2f} – {r['iqr_ms'][1]:.2f} |"
        )
    return lines


def run_facts(repeats: int, load_before) -> dict:
    """The settings and machine of a finished run: rounds, load average before and now, CPUs,
    numba's threads, versions, processor."""
    return dict(
        repeats=repeats,
        load_before=load_before,
        load_after=os.getloadavg(),
        cpus=os.cpu_count(),
        numba_threads=numba.get_num_threads(),
        torch=torch.__version__,
        numba=numba.__version__,
        machine=platform.processor() or platform.machine(),
    )


def write_result(result: dict, out: str, page_path: str, page) -> None:
    """Write the JSON to ``out`` and ``page(result)`` to ``page_path``; print the page."""
    Path(out).write_text(json.dumps(result, indent=1))
    text = page(result)
    Path(page_path).write_text(text)
    print(text)


ROOT = Path(__file__).resolve().parent.parent


def main(description: str, measure, page, repeats: int, name: str) -> None:
    """The command line of a per-op benchmark: ``--repeats``, ``--out`` (JSON, default
    benchmarks/results/<name>.json), ``--page`` (markdown, default docs/results/<name>.md); torch
    on 1 thread; ``measure(repeats)`` gives the rows, ``page(result)`` the page."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", default=str(ROOT / f"benchmarks/results/{name}.json"))
    parser.add_argument("--page", default=str(ROOT / f"docs/results/{name}.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = measure(args.repeats)
    write_result(dict(rows=rows, **run_facts(args.repeats, load_before)), args.out, args.page, page)
