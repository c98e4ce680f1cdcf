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
    if OUT.exists():
        command.append("--resume")
    started = time.perf_counter()
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - started) / 60
    summary = json.loads((OUT / "summary.json").read_text())
    for key in ("sweep", "size_heatmap", "extension"):
        source = Path(summary["figures"][key])
        shutil.copy(source, HERE / f"paper-figures-{source.name}")
    (HERE / "paper-figures-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (HERE / "paper-figures.md").write_text(page(summary, minutes))
    print(f"wrote {HERE / 'paper-figures.md'} ({minutes:.1f} min)")
    return 0


def cell(run: dict, L: int) -> str:
    value, low, high = (run[k]["reset"].get(str(L), run[k]["reset"].get(L)) for k in ("loss", "loss_low", "loss_high"))
    return f"{value:.3f} ± {(high - low) / 2:.3f}"


def page(summary: dict, minutes: float) -> str:
    runs = summary["runs"]
    lengths = summary["lengths"]
    L_max = lengths[-1]
    lines = [
        "# LongSSM Figures 5 and 9 at CPU scale",
        "",
        "Made by `python docs/results/paper_figures.py` "
        f"({minutes:.0f} min for this run; {len(runs)} runs of `longssm extend --quick`: byte-level S5, "
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
    for r in runs:
        if r["policy"] != "previous":
            continue
        v = r["extension"]["reset"]
        lines.append(f"| {r['d_model']} | {r['seq_len']} | {v['kind']} | {cell(r, 16)} | {cell(r, L_max)} | "
                     f"{v['change']:+.3f} [{v['change_low']:+.3f}, {v['change_high']:+.3f}] |")
    lines += [
        "",
        "## Figure 9: zero-initialised loss at L = 16 and at L_max over (size, T)",
        "",
        "![zero-init loss heatmaps](paper-figures-size-T-zero.png)",
        "",
        f"| d_model | T | verdict | loss at L=16 | loss at L={L_max} | rise from best [95%] |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        if r["policy"] != "zero":
            continue
        v = r["extension"]["reset"]
        lines.append(f"| {r['d_model']} | {r['seq_len']} | {v['kind']} | {cell(r, 16)} | {cell(r, L_max)} | "
                     f"{v['gap']:+.3f} [{v['gap_low']:+.3f}, {v['gap_high']:+.3f}] |")
    lines += [
        "",
        "The paper's Figure 9 (S5 on WikiText-103, zero-initialised; loss at L=16 vs L=32768):",
        "",
        "| model | T | L=16 | L=32768 |",
        "|---|---|---|---|",
        *[f"| S5 {m} | {T} | {a:.3f} | {b:.3f} |" for m, T, a, b in PAPER_FIG9],
        "",
        VERDICT_TEXT,
    ]
    return "\n".join(lines) + "\n"


VERDICT_TEXT = """## What carries over, and what does not

What carries over: with zero-initialised states, the models trained at short T are worst at long
L (their loss rises beyond the training length, significantly by the paired intervals), and the
rise shrinks as T grows, as in the paper's Figure 9, where only the T=16 model blows up; with
previous-initialised states the curves fall or stay flat out to L_max at every T (Figure 5), so
length extension no longer needs long training sequences. What does not: our models are 4-6
orders of magnitude smaller (tens of thousands of parameters, bytes instead of GPT-2 tokens, 300
steps), so absolute losses are not comparable with the paper's, L_max is 8,192 instead of 32,768,
and the intervals cover only the sampling of the test text, not training seeds. The paper's
larger models blow up (9.07 nats at L=32768 for T=16); ours rise by tenths of a nat and level
off. Read the table above for the exact numbers of this run."""


if __name__ == "__main__":
    sys.exit(main())
