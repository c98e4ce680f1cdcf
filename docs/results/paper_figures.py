"""Regenerate docs/results/paper-figures.md: LongSSM Figures 5 and 9 at CPU scale, by one command.

    python docs/results/paper_figures.py            # about 10-30 minutes on 2 cores

Runs ``longssm extend --quick`` over training lengths T = 16, 32, 64, 128 and widths d_model =
32, 64, 128 for both policies (24 runs, resumable: rerunning skips finished runs), then writes the
page, its figures and the sweep's summary beside this script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "results" / "paper-figures"
SEQ_LENS = "16,32,64,128"
WIDTHS = "32,64,128"
# The paper's Figure 9 (S5, zero-initialised): loss at L = 16 and at L = 32768.
PAPER_FIG9 = [("12M", 16, 4.113, 9.074), ("37M", 256, 3.900, 3.136), ("127M", 512, 3.836, 2.887)]


def main() -> int:
    command = [sys.executable, "-m", "longssm.cli", "extend", "--quick", "--seq-len", SEQ_LENS,
               "--d-model", WIDTHS, "--protocol", "reset", "--quiet", "--out", str(OUT)]
    resumed = OUT.exists()
    if resumed:
        command.append("--resume")
    started = time.perf_counter()
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - started) / 60
    summary = json.loads((OUT / "summary.json").read_text())
    for key in ("sweep", "size_heatmap", "extension"):
        source = Path(summary["figures"][key])
        shutil.copy(source, HERE / f"paper-figures-{source.name}")
    (HERE / "paper-figures-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    timing = ("redrawn from the finished runs in results/paper-figures" if resumed
              else f"{minutes:.1f} min from scratch")
    (HERE / "paper-figures.md").write_text(page(summary, timing))
    print(f"wrote {HERE / 'paper-figures.md'} ({minutes:.1f} min)")
    return 0


def cell(run: dict, L: int) -> str:
    value, low, high = (run[k]["reset"].get(str(L), run[k]["reset"].get(L)) for k in ("loss", "loss_low", "loss_high"))
    return f"{value:.3f} ± {(high - low) / 2:.3f}"


def table_rows(runs: list[dict], policy: str, evidence: str, L_max: int) -> list[str]:
    """One Markdown row per run of ``policy``: size, T, verdict, loss at 16 and L_max, and the
    verdict's ``evidence`` (change or gap) with its interval."""
    rows = []
    for r in runs:
        if r["policy"] == policy:
            v = r["extension"]["reset"]
            rows.append(
                f"| {r['d_model']} | {r['seq_len']} | {v['kind']} | {cell(r, 16)} | {cell(r, L_max)} "
                f"| {v[evidence]:+.3f} [{v[evidence + '_low']:+.3f}, {v[evidence + '_high']:+.3f}] |"
            )
    return rows


def page(summary: dict, timing: str) -> str:
    runs = summary["runs"]
    lengths = summary["lengths"]
    L_max = lengths[-1]
    lines = [
        "# LongSSM Figures 5 and 9 at CPU scale",
        "",
        "Made by `python docs/results/paper_figures.py` "
        f"({timing}; {len(runs)} runs of `longssm extend --quick`: byte-level S5, "
        "2 layers, d_state 16, 300 steps of 2,048 tokens on the Python standard library, reset "
        "protocol, 8,192 scored tokens per length, ± the half-width of the 95% paired "
        "block-bootstrap interval).",
        "",
        "## Figure 5: previous-initialised training at several T",
        "",
        "![previous-init loss vs L coloured by T](paper-figures-sweep-T.png)",
        "",
        "| d_model | T | verdict | loss at L=16 | loss at L_max | change from T to L_max [95%] |",
        "|---|---|---|---|---|---|",
    ]
    lines += table_rows(runs, "previous", "change", L_max)
    lines += [
        "",
        "## Figure 9: zero-initialised loss at L = 16 and at L_max over (size, T)",
        "",
        "![zero-init loss heatmaps](paper-figures-size-T-zero.png)",
        "",
        f"| d_model | T | verdict | loss at L=16 | loss at L={L_max} | rise from best [95%] |",
        "|---|---|---|---|---|---|",
    ]
    lines += table_rows(runs, "zero", "gap", L_max)
    lines += [
        "",
        "The paper's Figure 9 (S5 on WikiText-103, zero-initialised; loss at L=16 vs L=32768):",
        "",
        "| model | T | L=16 | L=32768 |",
        "|---|---|---|---|",
        *[f"| S5 {m} | {T} | {a:.3f} | {b:.3f} |" for m, T, a, b in PAPER_FIG9],
        "",
        conclusions(runs),
    ]
    return "\n".join(lines) + "\n"


def conclusions(runs: list[dict]) -> str:
    """What carries over, with this run's numbers (every claim computed from the summary)."""
    zero = [r for r in runs if r["policy"] == "zero"]
    previous = [r for r in runs if r["policy"] == "previous"]
    count = lambda rs, kind: sum(r["extension"]["reset"]["kind"] == kind for r in rs)  # noqa: E731
    rises = {}
    for r in zero:
        rises.setdefault(r["d_model"], {})[r["seq_len"]] = r["extension"]["reset"]["gap"]
    per_width = "; ".join(
        f"d_model {d}: " + ", ".join(f"T={T} {g:+.2f}" for T, g in sorted(by_T.items()))
        for d, by_T in sorted(rises.items())
    )
    widths, lengths = sorted(rises), sorted({T for by_T in rises.values() for T in by_T})
    longest_least = all(min(by_T, key=by_T.get) == lengths[-1] for by_T in rises.values())
    widest_most = all(
        max(widths, key=lambda d: rises[d].get(T, -1e9)) == widths[-1] for T in lengths
    )
    trends = []
    if longest_least:
        trends.append(f"the longest training length (T={lengths[-1]}) rises least at every width,"
                      " though the rise is not monotone in T")
    if widest_most:
        trends.append(f"the widest model (d_model {widths[-1]}) rises most at every T: larger models"
                      " extrapolate worse")
    trend = ("; ".join(trends) + ".") if trends else "no consistent trend in T or width."
    sizes = sorted(r["parameters"] for r in runs if r.get("parameters"))
    size_text = f"{sizes[0]:,}-{sizes[-1]:,} parameters" if sizes else "tens of thousands of parameters"
    return f"""## What carries over, and what does not

- Zero-initialised training: {count(zero, "none")} of {len(zero)} runs are **none** (the loss at
  L_max is significantly above the best loss at some L >= T), the paper's Figure 9 failure. The
  rise from the best length to L_max, in nats: {per_width}. Of the trends, {trend} The paper's
  own T=16 model reaches 9.07 nats at L=32768.
- Previous-initialised training: {count(previous, "strong")} of {len(previous)} runs are
  **strong** and {count(previous, "weak")} weak: from T to L_max the loss falls (Figure 5), so
  length extension does not need long training sequences.
- What does not carry over: our models are 3-4 orders of magnitude smaller ({size_text},
  bytes instead of GPT-2 tokens, 300 steps), so absolute losses are not comparable; L_max is 8,192
  instead of 32,768; our T stops at 128, below the T=256/512 at which the paper's zero-initialised
  37M/127M models extend, so that crossover is not reached here; and the intervals cover the
  sampling of the test text, not training seeds (one seed per cell).
"""


if __name__ == "__main__":
    sys.exit(main())
