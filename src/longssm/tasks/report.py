"""Tables and heatmaps drawn from task result records (the JSON the runs write)."""

from __future__ import annotations

import numpy as np


def cell(b: dict) -> str:
    if b["value"] is None or not np.isfinite(b["value"]):
        return "diverged"
    if b["metric"] == "accuracy":
        return f"{100 * b['value']:.1f} [{100 * b['low']:.1f}, {100 * b['high']:.1f}]"
    return f"{b['value']:.3g} [{b['low']:.3g}, {b['high']:.3g}]"


def table(records: list[dict], markdown: bool = False) -> str:
    """One row per run: task, mixer, depth, then each bin's value [95% interval]."""
    lines = []
    for r in records:
        cfg = r["config"]
        bins = "  ".join(f"{b['lo']}-{b['hi']}: {cell(b)}" for b in r["bins"])
        if markdown:
            row = " | ".join(cell(b) for b in r["bins"])
            spans = ", ".join(f"{b['lo']}-{b['hi']}" for b in r["bins"])
            lines.append(f"| {r['task']} | {cfg['mixer']} | {cfg['layers']} | {r['metric']} | "
                         f"{row} | {spans} |")
        else:
            lines.append(f"{r['task']:>14} {cfg['mixer']:>24} x{cfg['layers']}  {bins}")
    if markdown:
        head = ("| task | mixer | layers | metric | ID bin | bin 2 | bin 3 | bin 4 | lengths |\n"
                "|---|---|---|---|---|---|---|---|---|")
        lines.insert(0, head)
    return "\n".join(lines)


def heatmap(records: list[dict], path: str, metric: str) -> None:
    """Rows: (task, mixer, depth); columns: length bins; colour: accuracy or log10 nMSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["metric"] == metric]
    if not rows:
        return
    width = max(len(r["bins"]) for r in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        for j, b in enumerate(r["bins"]):
            v = b["value"] if b["value"] is not None else np.nan
            grid[i, j] = v if metric == "accuracy" else np.log10(max(v, 1e-6))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    cmap, lims = ("viridis", (0, 1)) if metric == "accuracy" else ("magma_r", (-4, 1))
    im = ax.imshow(np.clip(grid, *lims), cmap=cmap, vmin=lims[0], vmax=lims[1], aspect="auto")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['task']} {r['config']['mixer']} x{r['config']['layers']}"
                        for r in rows], fontsize=7)
    ax.set_xticks(range(width))
    ax.set_xticklabels(["train" if j == 0 else f"bin {j}" for j in range(width)])
    for i in range(len(rows)):
        for j in range(width):
            if np.isfinite(grid[i, j]):
                text = f"{grid[i, j] * 100:.0f}" if metric == "accuracy" else f"{grid[i, j]:.1f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="accuracy" if metric == "accuracy" else "log10 nMSE")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
