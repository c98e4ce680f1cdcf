"""Tables and heatmaps drawn from task result records (the JSON the runs write)."""

from __future__ import annotations

import numpy as np


def cell(b: dict) -> str:
    if b["value"] is None or not np.isfinite(b["value"]):
        return "diverged"
    if b["metric"] == "accuracy":
        return f"{100 * b['value']:.1f} [{100 * b['low']:.1f}, {100 * b['high']:.1f}]"
    return f"{b['value']:.3g} [{b['low']:.3g}, {b['high']:.3g}]"


def _run_label(cfg: dict) -> str:
    return f"{cfg['steps']} @ {cfg['lr']:g}" + (f", seed {cfg['seed']}" if cfg.get("seed") else "")


def table(records: list[dict], markdown: bool = False) -> str:
    """One row per run: task, mixer, depth, steps @ lr, then each bin's value [95% interval]."""
    lines = []
    for r in records:
        cfg = r["config"]
        bins = "  ".join(f"{b['lo']}-{b['hi']}: {cell(b)}" for b in r["bins"])
        if markdown:
            row = " | ".join(cell(b) for b in r["bins"])
            spans = ", ".join(f"{b['lo']}-{b['hi']}" for b in r["bins"])
            unit = f" ({r['bins'][0]['unit']})" if "unit" in r["bins"][0] else ""
            lines.append(f"| {r['task']} | {cfg['mixer']} | {cfg['layers']} | {cfg['d_model']} | "
                         f"{_run_label(cfg)} | {r['metric']}{unit} | {row} | {spans} |")
        else:
            lines.append(f"{r['task']:>14} {cfg['mixer']:>24} x{cfg['layers']}  {bins}")
    if markdown:
        head = ("| task | mixer | layers | d_model | steps @ lr | metric | ID bin | bin 2 | bin 3 | "
                "bin 4 | lengths |\n|---|---|---|---|---|---|---|---|---|---|---|")
        lines.insert(0, head)
    return "\n".join(lines)


def _pct(row: dict) -> str:
    return f"{100 * row['value']:.0f} ({100 * row['low']:.0f}-{100 * row['high']:.0f})"


def per_length_table(records: list[dict]) -> str:
    """Accuracy at each length k of the training bin (prefix-scored tasks), % (Wilson 95%)."""
    rows = [r for r in records if "per_length" in r["bins"][0]]
    if not rows:
        return ""
    ks = [p["k"] for p in rows[0]["bins"][0]["per_length"]]
    lines = ["| task | mixer | layers | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for r in rows:
        cells = " | ".join(_pct(p) for p in r["bins"][0]["per_length"])
        lines.append(f"| {r['task']} | {r['config']['mixer']} | {r['config']['layers']} | {cells} |")
    return "\n".join(lines)


def min_depth_table(records: list[dict], threshold: float = 0.9) -> str:
    """Per (task, mixer) with several depths: the smallest depth whose accuracy at length k
    reaches ``threshold`` ("-": none of the depths run). "?" marks a call the Wilson intervals do
    not settle (that depth's interval or the shallower depth's straddles the threshold)."""
    groups: dict[tuple, dict[int, list]] = {}
    for r in records:
        if "per_length" in r["bins"][0]:
            key = (r["task"], r["config"]["mixer"])
            groups.setdefault(key, {})[r["config"]["layers"]] = r["bins"][0]["per_length"]
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return ""
    ks = [p["k"] for p in next(iter(next(iter(groups.values())).values()))]
    lines = ["| task | mixer | depths | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    for (task, mixer), by_depth in groups.items():
        depths = sorted(by_depth)
        cells = []
        for i in range(len(ks)):
            rows = [by_depth[d][i] for d in depths]
            hit = next((j for j, p in enumerate(rows) if p["value"] >= threshold), None)
            if hit is None:
                unsure = any(p["high"] >= threshold for p in rows)
                cells.append("-?" if unsure else "-")
                continue
            unsure = rows[hit]["low"] < threshold or (hit > 0 and rows[hit - 1]["high"] >= threshold)
            cells.append(f"{depths[hit]}{'?' if unsure else ''}")
        span = f"{depths[0]}-{depths[-1]}"
        lines.append(f"| {task} | {mixer} | {span} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(records: list[dict]) -> str:
    """Runs repeated over seeds (same task, mixer, depth, steps, lr): mean and min-max of every
    bin's value, and the largest Re λ (how close the slowest mode came to 0)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["config"]
        groups.setdefault((r["task"], c["mixer"], c["layers"], c["steps"], c["lr"]), []).append(r)
    lines = []
    for (task, mixer, layers, steps, lr), runs in groups.items():
        if len(runs) < 2:
            continue
        values = np.array([[b["value"] for b in r["bins"]] for r in runs], dtype=float)
        cells = " | ".join(f"{m:.3g} ({lo:.3g}-{hi:.3g})" for m, lo, hi in
                           zip(values.mean(0), values.min(0), values.max(0)))
        eig = [r["eigenvalues"]["max_real"] for r in runs if r.get("eigenvalues")]
        eig_cell = f"{min(eig):.2g} to {max(eig):.2g}" if eig else "n/a"
        finite = all(r["train"]["finite"] for r in runs)
        lines.append(f"| {task} | {mixer} | {layers} | {steps} @ {lr:g} | {len(runs)} | {cells} | "
                     f"{eig_cell} | {'yes' if finite else 'no'} |")
    if not lines:
        return ""
    head = ("| task | mixer | layers | steps @ lr | seeds | ID bin | bin 2 | bin 3 | bin 4 | "
            "max Re λ | finite |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(lines)


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
