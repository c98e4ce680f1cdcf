"""Figures drawn only from saved results documents (``longssm.eval.results``), never from a model.

    plot_lengths    loss vs evaluation length L on a log-2 axis, several runs (LongSSM Figure 4):
                    runs are colours, protocols line styles, shaded 95% intervals
    plot_sweep      a training-length sweep (Figure 5): one curve per run, coloured by its training
                    length T, with T marked on its curve
    plot_heatmap    train T (rows) x eval L (columns) of one metric
    plot_size_heatmap  model size (rows) x train T (columns) of one run-set's loss at two lengths,
                    side by side (LongSSM Figure 9: zero-init loss at L = T_min and at L_max)
    plot_positions  per-position loss (and per-layer state norm) along length-L windows

Each function takes a list of results dicts and an output path and returns the files written:
a ``.png``, ``.svg`` or ``.pdf`` path writes that format; a path without suffix writes both
``.png`` and ``.svg``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longssm.eval.errors import EvalError  # noqa: E402
from longssm.eval.results import records_of  # noqa: E402

METRICS = ("loss", "perplexity", "bits_per_byte")
METRIC_LABELS = {
    "loss": "loss (nats / token)",
    "perplexity": "perplexity",
    "bits_per_byte": "bits per byte",
}
LINESTYLES = {"reset": "-", "stream": "--", "shuffled": ":"}
FORMATS = (".png", ".svg", ".pdf")


def run_label(results: dict) -> str:
    """``run (policy, T=...)`` from what the results know about their run."""
    extras = []
    if results.get("policy"):
        extras.append(str(results["policy"]))
    if results.get("train_length"):
        extras.append(f"T={results['train_length']}")
    name = results.get("run") or Path(results.get("path", "results")).stem
    return f"{name} ({', '.join(extras)})" if extras else name


def save_figure(fig, out) -> list[Path]:
    """Write ``fig`` to ``out`` (see the module docstring) and close it."""
    out = Path(out)
    if out.suffix and out.suffix.lower() not in FORMATS:
        raise EvalError(f"unknown figure format {out.suffix!r}; use one of {', '.join(FORMATS)}")
    paths = [out] if out.suffix else [out.with_suffix(".png"), out.with_suffix(".svg")]
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise EvalError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def _log2_axis(ax) -> None:
    ax.set_xscale("log", base=2)
    ax.grid(True, which="major", alpha=0.3)


def _in_metric(loss: float, record: dict, metric: str) -> float:
    """A loss value in ``metric`` units, with the record's own conversion (bits per byte is linear)."""
    if metric == "loss":
        return loss
    if metric == "perplexity":
        return math.exp(min(loss, 700.0))
    return loss * record["bits_per_byte"] / record["loss"] if record["loss"] else 0.0


def _band(ax, rows: list[dict], metric: str, colour) -> None:
    """Shade the 95% interval of every point (nothing for records without one)."""
    if any(r.get("loss_low") is None for r in rows):
        return
    ax.fill_between(
        [r["length"] for r in rows],
        [_in_metric(r["loss_low"], r, metric) for r in rows],
        [_in_metric(r["loss_high"], r, metric) for r in rows],
        color=colour, alpha=0.18, linewidth=0,
    )


def plot_lengths(results: list[dict], out, metric: str = "loss", protocols=None) -> list[Path]:
    """Metric vs evaluation length for every run and protocol, with shaded 95% intervals."""
    _check_metric(metric)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = plt.cm.tab10(np.arange(len(results)) % 10)
    drawn = 0
    for res, colour in zip(results, colours):
        for protocol in protocols or res.get("protocols", []):
            rows = records_of(res, protocol)
            if not rows:
                continue
            ax.plot(
                [r["length"] for r in rows], [r[metric] for r in rows],
                linestyle=LINESTYLES.get(protocol, "-."), marker="o", markersize=3, color=colour,
                label=f"{run_label(res)} {protocol}",
            )
            _band(ax, rows, metric, colour)
            drawn += 1
    if not drawn:
        raise EvalError("no records to plot")
    _log2_axis(ax)
    ax.set_xlabel("evaluation length L")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def _by_train_length(results: list[dict]) -> list[dict]:
    missing = [run_label(r) for r in results if not r.get("train_length")]
    if missing:
        raise EvalError(f"results without a training length cannot be swept: {', '.join(missing)}")
    return sorted(results, key=lambda r: (r["train_length"], run_label(r)))


def plot_sweep(results: list[dict], out, protocol: str = "reset", metric: str = "loss") -> list[Path]:
    """One curve per run coloured by training length T; a star marks L = T on each curve."""
    _check_metric(metric)
    runs = _by_train_length(results)
    Ts = [r["train_length"] for r in runs]
    lo, hi = math.log2(min(Ts)), math.log2(max(Ts))
    cmap = plt.cm.viridis
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for res in runs:
        rows = records_of(res, protocol)
        if not rows:
            raise EvalError(f"{run_label(res)} has no {protocol} records")
        T = res["train_length"]
        colour = cmap(0.0 if hi == lo else (math.log2(T) - lo) / (hi - lo) * 0.9)
        Ls, ys = [r["length"] for r in rows], [r[metric] for r in rows]
        ax.plot(Ls, ys, marker="o", markersize=3, color=colour, label=run_label(res))
        _band(ax, rows, metric, colour)
        if T in Ls:
            ax.plot([T], [ys[Ls.index(T)]], marker="*", markersize=11, color=colour)
    _log2_axis(ax)
    ax.set_xlabel("evaluation length L (star: training length T)")
    ax.set_ylabel(f"{METRIC_LABELS[metric]}, {protocol}")
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def plot_heatmap(results: list[dict], out, protocol: str = "reset", metric: str = "loss") -> list[Path]:
    """Rows: runs sorted by training length T; columns: evaluation lengths; cells annotated."""
    _check_metric(metric)
    runs = _by_train_length(results)
    lengths = sorted({r["length"] for res in runs for r in records_of(res, protocol)})
    if not lengths:
        raise EvalError(f"no {protocol} records to plot")
    grid = np.full((len(runs), len(lengths)), np.nan)
    for i, res in enumerate(runs):
        for r in records_of(res, protocol):
            grid[i, lengths.index(r["length"])] = r[metric]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(lengths), 1.0 + 0.45 * len(runs)))
    finite = grid[np.isfinite(grid)]
    vmax = np.percentile(finite, 95) if finite.size else 1.0
    image = ax.imshow(np.where(np.isfinite(grid), grid, vmax), cmap="magma_r", aspect="auto",
                      vmax=vmax)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] > np.nanmedian(grid) else "black")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], rotation=45, fontsize=7)
    ax.set_yticks(range(len(runs)), [f"T={r['train_length']}" for r in runs], fontsize=7)
    ax.set_xlabel("evaluation length L")
    ax.set_ylabel("training length")
    fig.colorbar(image, ax=ax, label=f"{METRIC_LABELS[metric]}, {protocol}")
    return save_figure(fig, out)


def plot_positions(results: list[dict], out) -> list[Path]:
    """Per-position loss (top) and per-layer state norm (bottom) vs position, log-2 axes."""
    curves = [(res, c) for res in results for c in res.get("positions") or []]
    if not curves:
        raise EvalError("no per-position curves in the results (evaluate with --positions)")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    colours = plt.cm.tab10(np.arange(len(curves)) % 10)
    for (res, curve), colour in zip(curves, colours):
        label = f"{run_label(res)} {curve['protocol']} L={curve['length']}"
        top.plot(curve["positions"], curve["loss"], marker="o", markersize=3, color=colour,
                 linestyle=LINESTYLES.get(curve["protocol"], "-"), label=label)
        norms = np.asarray(curve["state_norms"])  # (m, n_layers)
        for layer in range(norms.shape[1] if norms.ndim == 2 else 0):
            bottom.plot(curve["state_positions"], norms[:, layer], color=colour,
                        alpha=0.4 + 0.6 * (layer + 1) / norms.shape[1], linewidth=1,
                        label=label if layer == 0 else None)
        if res.get("train_length"):
            top.axvline(res["train_length"], color=colour, alpha=0.3, linestyle=":")
    _log2_axis(top)
    _log2_axis(bottom)
    bottom.set_yscale("log")
    top.set_ylabel("loss at position t (nats)")
    bottom.set_ylabel("state max |h| per layer")
    bottom.set_xlabel("position t (dotted: training length)")
    top.legend(fontsize=7)
    return save_figure(fig, out)


def plot_size_heatmap(
    results: list[dict], out, protocol: str = "reset", metric: str = "loss"
) -> list[Path]:
    """Two panels, loss at the shortest and at the longest length: rows d_model, columns T.

    Each cell is one run (results of one policy); the annotation is ``value ± half-width``.
    """
    _check_metric(metric)
    runs = _by_train_length(results)
    sizes = sorted({r.get("model_config", {}).get("d_model", 0) for r in runs})
    Ts = sorted({r["train_length"] for r in runs})
    lengths = sorted({rec["length"] for res in runs for rec in records_of(res, protocol)})
    if not lengths:
        raise EvalError(f"no {protocol} records to plot")
    fig, axes = plt.subplots(1, 2, figsize=(2.0 + 1.6 * len(Ts), 1.4 + 0.5 * len(sizes)),
                             squeeze=False)
    for ax, L in zip(axes[0], (lengths[0], lengths[-1])):
        grid = np.full((len(sizes), len(Ts)), np.nan)
        notes = {}
        for res in runs:
            rec = next((r for r in records_of(res, protocol) if r["length"] == L), None)
            if rec is None:
                continue
            i, j = sizes.index(res.get("model_config", {}).get("d_model", 0)), Ts.index(res["train_length"])
            grid[i, j] = rec[metric]
            hw = None if rec.get("loss_low") is None else (rec["loss_high"] - rec["loss_low"]) / 2
            notes[i, j] = f"{rec[metric]:.3f}" + (f"\n±{hw:.3f}" if hw is not None and metric == "loss" else "")
        image = ax.imshow(grid, cmap="magma_r", aspect="auto")
        for (i, j), text in notes.items():
            ax.text(j, i, text, ha="center", va="center", fontsize=6,
                    color="white" if grid[i, j] > np.nanmedian(grid) else "black")
        ax.set_xticks(range(len(Ts)), [str(T) for T in Ts], fontsize=7)
        ax.set_yticks(range(len(sizes)), [str(d) for d in sizes], fontsize=7)
        ax.set_xlabel("training length T")
        ax.set_ylabel("d_model")
        ax.set_title(f"{protocol} {metric} at L={L}", fontsize=8)
        fig.colorbar(image, ax=ax)
    return save_figure(fig, out)


PLOTS = {
    "lengths": plot_lengths,
    "sweep": plot_sweep,
    "heatmap": plot_heatmap,
    "size-heatmap": plot_size_heatmap,
    "positions": plot_positions,
}
