"""Figures of ``longssm analyze``, each drawn from the JSON its command writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    _plt().close(fig)


def _ticks(ax, tokens: list[str], axis: str) -> None:
    if len(tokens) > 64:
        return
    labels = [repr(t)[1:-1] for t in tokens]
    if axis == "x":
        ax.set_xticks(range(len(tokens)), labels, rotation=90, fontsize=5)
    else:
        ax.set_yticks(range(len(tokens)), labels, fontsize=5)


def attention_figure(result: dict, path: Path) -> None:
    """Per layer: the carried-state share column, mean and max |α| (min-max scaled), chosen channels."""
    plt = _plt()
    layers = result["layers"]
    n_chan = len(layers[0]["channels"])
    cols = 3 + n_chan
    fig, axes = plt.subplots(len(layers), cols, figsize=(3.2 * cols, 3.2 * len(layers)), squeeze=False,
                             gridspec_kw={"width_ratios": [0.12] + [1] * (cols - 1)})
    for row, entry in zip(axes, layers):
        share = np.asarray(entry["state_share"])[:, None]
        row[0].imshow(share, aspect="auto", cmap="Reds", vmin=0, vmax=max(1.0, float(share.max())))
        row[0].set_title("state", fontsize=7)
        row[0].set_xticks([])
        _ticks(row[0], result["tokens"], "y")
        panels = [("mean |α|", entry["mean"]), ("max |α|", entry["max"])]
        panels += [(f"channel {c}", m) for c, m in entry["channels"].items()]
        for ax, (title, m) in zip(row[1:], panels):
            ax.imshow(np.asarray(m), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {entry['layer']}: {title}", fontsize=8)
            ax.set_yticks([])
            _ticks(ax, result["tokens"], "x")
    fig.suptitle(f"hidden attention ({result['kind']} view) of {result['label']}"
                 + (", from a carried state" if result["carried_state"] else ""), fontsize=9)
    _save(fig, path)


def reliance_figure(result: dict, path: Path) -> None:
    """‖state term‖ / ‖y_t‖ against the position t, one line per (run, layer), 95% bands."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    t = np.asarray(result["positions"])
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(result["runs"]):
        for entry in run["layers"]:
            colour = f"C{i}"
            ax.plot(t, entry["mean"], styles[entry["layer"] % 4], color=colour,
                    label=f"{run['label']}, layer {entry['layer']}")
            ax.fill_between(t, entry["low"], entry["high"], color=colour, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("position t in the window (stream protocol)")
    ax.set_ylabel("‖state term‖ / ‖scan output‖")
    ax.legend(fontsize=6)
    ax.set_title(f"state reliance ({result['rows']} windows of {result['length']} tokens, 95% bands)",
                 fontsize=9)
    _save(fig, path)


def prophecy_figure(result: dict, path: Path) -> None:
    """RMSE against N for every Δ, with persistence as dashed lines of the same colour."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    dts = sorted({r["dt"] for r in result["rows"]})
    for i, dt in enumerate(dts):
        rows = [r for r in result["rows"] if r["dt"] == dt]
        N = [r["N"] for r in rows]
        mean = [r["rmse"][0] for r in rows]
        ax.errorbar(N, mean, yerr=[[m - r["rmse"][1] for m, r in zip(mean, rows)],
                                   [r["rmse"][2] - m for m, r in zip(mean, rows)]],
                    marker="o", color=f"C{i}", label=f"HiPPO-{result['measure']} SSM, Δ={dt}")
        ax.axhline(rows[0]["persistence_rmse"][0], color=f"C{i}", ls="--", lw=1,
                   label=f"persistence, Δ={dt}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("state size N")
    ax.set_ylabel("one-step RMSE")
    ax.set_title(f"{result['signal']}: one-step forecast (θ={result['theta']}, "
                 f"{result['replicates']} replicates, 95% intervals)", fontsize=9)
    ax.legend(fontsize=6)
    _save(fig, path)
