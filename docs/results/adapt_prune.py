"""Regenerate docs/results/adapt-prune.md: state tuning, pruning and token reduction at CPU scale.

    PYTHONPATH=src python docs/results/adapt_prune.py        # about 3 minutes from scratch on 2 cores

1. Pretrain a small byte-level Mamba on the Python standard library (``longssm train``).
2. Adapt it to Jane Austen (../shared/corpora/austen) with each state-tuning method, prefix
   tuning, LoRA and full fine-tuning
   (``longssm.adapt.adapt_run``); score the base and every adapter on Austen's test split with
   ``longssm.eval.evaluate_lengths`` (95% block-bootstrap intervals) and per position
   (``longssm.adapt.window_nll``, paired window-bootstrap intervals on the gain).
3. Prune the base with each method at several ratios; loss on the stdlib test split at a short
   (L = T) and a long (L = 16 T) length, with intervals.
4. Token reduction after block 0: loss at the kept positions vs keep ratio, plain and beyond T.
Writes adapt-prune.md, adapt-prune.json and adapt-prune.png beside this script; the runs go to
results/adapt-prune/ (rerunning reuses the pretrained base and finished adapters, and says so
on stderr: delete them to train afresh after a change to the code).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from longssm.adapt import (
    STATE_METHODS,
    AdaptSettings,
    ReduceSpec,
    adapt_run,
    load_adapted,
    position_gain,
    prune_model,
    read_adapter,
    reduced_nll,
    window_nll,
)
from longssm.adapt.prune import calibration_rows, count_parameters
from longssm.adapt.score import summarise
from longssm.adapt.tune import target_corpus
from longssm.checkpoint import load_model
from longssm.config import load_run_config
from longssm.eval import evaluate_lengths
from longssm.eval.intervals import bootstrap_indices, percentile_interval, record_replicates
from longssm.train.loop import train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "results" / "adapt-prune"
AUSTEN = str((ROOT.parent / "shared" / "corpora" / "austen").resolve())
T = 64
BASE = ["--model.mixer=mamba", "--model.d_model=64", "--model.n_layers=2", "--model.d_state=16",
        "--model.d_conv=4", "--data.corpus=python-stdlib", f"--data.seq_len={T}",
        "--data.batch_size=16", "--train.steps=400", "--train.policy=zero", "--train.lr=3e-3",
        "--train.threads=1", "--train.eval_batches=2"]
ADAPT_STEPS = 150
ADAPT_METHODS = [*STATE_METHODS, "prefix:4", "lora:4", "full"]
"""State tuning (Kang et al. 2025), prefix tuning with 4 learned mixer inputs per layer, LoRA at
rank 4 (alpha 4) on in_proj/x_proj/out_proj, and full fine-tuning."""
ADAPT_LR = {"full": 1e-3}
"""AdamW learning rate per method (default 1e-2; full fine-tuning diverges at that rate)."""
PRUNE_RATIOS = [0.0, 0.25, 0.5, 0.75]
PRUNE_METHODS = ["magnitude", "wanda", "dstate-magnitude", "dstate-taylor1", "dstate-taylor2"]
KEEPS = [1.0, 0.75, 0.5]
EVAL_TOKENS = 8192


def pretrain(out: Path = OUT, base: list[str] = BASE) -> Path:
    """The base model of ``base``'s options in out/base: trained there, or a finished run there
    reused as it is (said on stderr: a run of older code is not retrained)."""
    run = out / "base"
    if reusing(run, done=run / "checkpoints"):
        return run
    cfg = load_run_config(None, base)
    cfg.train.progress = False
    train(cfg, run)
    return run


def reusing(path: Path, done: Path | None = None) -> bool:
    """Whether the run or adapter at ``path`` is finished (``done``, default ``path`` itself,
    exists) and will be reused; says so on stderr, since the page then shows that run whatever
    code trained it."""
    if not (done or path).exists():
        return False
    print(f"reusing {path} (delete it to train afresh with the current code)", file=sys.stderr)
    return True


def lengths_records(model, tokens, lengths):
    records = evaluate_lengths(model, tokens, lengths, "reset", n_tokens=EVAL_TOKENS,
                               batch_size=8, progress=False)
    keys = ("length", "loss", "loss_low", "loss_high", "block_nll", "block_tokens")
    return [{k: r[k] for k in keys} for r in records]


def paired(a: dict, b: dict, c: dict | None = None, d: dict | None = None) -> dict:
    """loss(a) - loss(b) [- (loss(c) - loss(d))] with a paired block-bootstrap 95% interval."""
    idx = bootstrap_indices(len(a["block_nll"]))
    reps = record_replicates(a, idx) - record_replicates(b, idx)
    value = a["loss"] - b["loss"]
    if c is not None:
        reps = reps - (record_replicates(c, idx) - record_replicates(d, idx))
        value -= c["loss"] - d["loss"]
    low, high = percentile_interval(reps)
    return {"delta": value, "low": low, "high": high}


def adapt_study(base: Path) -> dict:
    model, _, meta = load_model(base)
    test = target_corpus(meta, AUSTEN, "test", model.cfg.vocab_size).tokens
    edges = [1, 2, 5, 17, 65, 257, 513]
    base_nll = window_nll(model, test, 512, 48)
    out = {"base": {"trainable": 0, "lengths": lengths_records(model, test, [T, 512]),
                    "window": summarise(base_nll)}}
    for method in ADAPT_METHODS:
        path = OUT / f"austen-{method.replace(':', '')}"
        if not reusing(path):
            lr = ADAPT_LR.get(method, 1e-2)
            adapt_run(base, method, AUSTEN, path, AdaptSettings(steps=ADAPT_STEPS, lr=lr,
                                                                progress=False))
        adapted, ameta, _ = load_adapted(path)
        nll = window_nll(adapted, test, 512, 48)
        out[method] = {"trainable": ameta["trainable_parameters"], "seconds": ameta["seconds"],
                       "lengths": lengths_records(adapted, test, [T, 512]),
                       "window": summarise(nll), "gain": position_gain(base_nll, nll, edges)}
    out["base_parameters"] = read_adapter(OUT / f"austen-{STATE_METHODS[0]}")[0]["base_parameters"]
    return out


def prune_study(base: Path) -> dict:
    model, _, meta = load_model(base)
    corpus = meta["config"]["data"]["corpus"]
    test = target_corpus(meta, corpus, "test", model.cfg.vocab_size).tokens
    calib = calibration_rows(target_corpus(meta, corpus, "train", model.cfg.vocab_size).tokens,
                             32, T)
    out = {}
    for method in PRUNE_METHODS:
        rows = []
        for ratio in PRUNE_RATIOS:
            pruned, info = prune_model(copy.deepcopy(model), method, ratio, calib)
            start = time.perf_counter()
            records = lengths_records(pruned, test, [T, 16 * T])
            rows.append({"ratio": ratio, "parameters": count_parameters(pruned)["nonzero"],
                         "d_state": pruned.cfg.d_state, "records": records,
                         "kept_states": info.get("kept_states"),
                         "eval_seconds": time.perf_counter() - start})
        for row in rows:
            short, long = row["records"]
            dense_short, dense_long = rows[0]["records"]
            row["delta_short"] = paired(short, dense_short)
            row["delta_long"] = paired(long, dense_long)
            # does pruning hurt the long length more than the short one?
            row["long_minus_short"] = paired(long, dense_long, short, dense_short)
        out[method] = rows
    return out


def reduce_study(base: Path) -> dict:
    model, _, meta = load_model(base)
    test = target_corpus(meta, meta["config"]["data"]["corpus"], "test",
                         model.cfg.vocab_size).tokens
    starts = np.linspace(0, len(test) - 4 * T - 2, 32).astype(np.int64)
    windows = torch.as_tensor(np.asarray(test[starts[:, None] + np.arange(4 * T + 1)],
                                         dtype=np.int64))
    out = {}
    with torch.inference_mode():
        for method in ("random", "evit", "tome", "hybrid"):
            for beyond in (0, T):
                rows = []
                for keep in KEEPS:
                    nll, _ = reduced_nll(model, windows, ReduceSpec(method, keep, (0,), beyond))
                    rows.append({"keep": keep, **summarise(nll.numpy())})
                out[f"{method}{'-beyond-T' if beyond else ''}"] = rows
    return out


def fmt(r: dict) -> str:
    return f"{r['loss']:.3f} [{r['loss_low']:.3f}, {r['loss_high']:.3f}]"


def fmt_d(d: dict) -> str:
    return f"{d['delta']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def write_page(data: dict, minutes: float) -> None:
    a, p, r = data["adapt"], data["prune"], data["reduce"]
    lines = [
        "# Adapting and compressing a trained Mamba (CPU scale)", "",
        "Made by `PYTHONPATH=src python docs/results/adapt_prune.py` "
        f"({minutes:.1f} min on this machine). Base: byte-level Mamba, d_model 64, 2 layers, "
        f"d_state 16, {a['base_parameters']:,} parameters, 400 steps of 16 x {T} tokens on the "
        "Python standard library (zero-initialised state). Loss in nats per byte; "
        "[95% interval] from `longssm.eval.evaluate_lengths` (paired block bootstrap) unless "
        "noted.", "",
        "## State tuning: stdlib -> Austen", "",
        f"{ADAPT_STEPS} steps of AdamW (lr 1e-2; full fine-tuning 1e-3) on 16 x {T}-byte rows "
        "of Austen's train split; only the method's tensors train (every tensor for `full`). "
        "`prefix:4` learns 4 mixer inputs per layer (the state they leave is each sequence's "
        "start).", "",
        "| method | trainable | Austen test loss, L=64 | L=512 |", "|---|---:|---:|---:|",
    ]
    for name in ["base", *ADAPT_METHODS]:
        rec = a[name]["lengths"]
        lines.append(f"| {name} | {a[name]['trainable']:,} | {fmt(rec[0])} | {fmt(rec[1])} |")
    lines += ["", "Per-position gain (base loss - adapted loss, 48 windows of 512 bytes from zero "
              "state, [95% paired window bootstrap]):", "",
              "| positions | " + " | ".join(ADAPT_METHODS) + " |",
              "|---|" + "---:|" * len(ADAPT_METHODS)]
    for k, g in enumerate(a[STATE_METHODS[0]]["gain"]):
        cells = [a[m]["gain"][k] for m in ADAPT_METHODS]
        lines.append(f"| {g['start']}-{g['end']} | " + " | ".join(
            f"{c['gain']:+.3f} [{c['gain_low']:+.3f}, {c['gain_high']:+.3f}]" for c in cells) + " |")
    lines += ["", "## Pruning (stdlib test split)", "",
              "Non-zero parameters; Δ = pruned - unpruned loss on the same text, [95% paired "
              "block bootstrap]; the last column is Δ(L=1024) - Δ(L=64), paired.", "",
              "| method | ratio | non-zero params | d_state | loss L=64 | loss L=1024 | Δ L=64 "
              "| Δ L=1024 | Δ long - Δ short |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, rows in p.items():
        for row in rows:
            rec = row["records"]
            lines.append(f"| {method} | {row['ratio']} | {row['parameters']:,} | {row['d_state']} "
                         f"| {fmt(rec[0])} | {fmt(rec[1])} | {fmt_d(row['delta_short'])} "
                         f"| {fmt_d(row['delta_long'])} | {fmt_d(row['long_minus_short'])} |")
    lines += ["", f"## Token reduction after block 0 (windows of {4 * T} bytes, loss at the kept "
              "positions only, [95% window bootstrap])", "",
              "| method | " + " | ".join(f"keep {k}" for k in KEEPS) + " |",
              "|---|" + "---:|" * len(KEEPS)]
    for name, rows in r.items():
        lines.append(f"| {name} | " + " | ".join(fmt(x) for x in rows) + " |")
    lines += ["", "![adapt and prune](adapt-prune.png)", "", data["verdict"], ""]
    (HERE / "adapt-prune.md").write_text("\n".join(lines))


def plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for m in ADAPT_METHODS:
        g = data["adapt"][m]["gain"]
        x = [np.sqrt(r["start"] * r["end"]) for r in g]
        axes[0].plot(x, [r["gain"] for r in g], marker="o", label=m)
        axes[0].fill_between(x, [r["gain_low"] for r in g], [r["gain_high"] for r in g], alpha=0.2)
    axes[0].set(xscale="log", xlabel="position", ylabel="gain (nats)", title="state tuning gain")
    for method, rows in data["prune"].items():
        for k, style in ((0, "-"), (1, "--")):
            axes[1].plot([r["ratio"] for r in rows], [r["records"][k]["loss"] for r in rows],
                         style, marker="o", label=f"{method} L={rows[0]['records'][k]['length']}")
    axes[1].set(xlabel="pruning ratio", ylabel="loss", title="pruning")
    for name, rows in data["reduce"].items():
        axes[2].plot([r["keep"] for r in rows], [r["loss"] for r in rows], marker="o", label=name)
    axes[2].set(xlabel="keep ratio", ylabel="loss (kept positions)", title="token reduction")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / "adapt-prune.png", dpi=110)


def _gain(g: dict) -> str:
    return f"{g['gain']:+.3f} [{g['gain_low']:+.3f}, {g['gain_high']:+.3f}]"


def verdict(data: dict) -> str:
    """The closing section: the papers' claims beside what this run's numbers show."""
    a, p = data["adapt"], data["prune"]
    base_long = a["base"]["lengths"][1]["loss"]
    best = max(STATE_METHODS, key=lambda m: base_long - a[m]["lengths"][1]["loss"])
    ini, off = a["initial-state"]["gain"], a["state-offset-h"]["gain"]
    lines = ["## The papers and what carries over", "",
             "- *State-offset Tuning* (Kang et al. 2025) reports offset (h) above initial-state "
             "and prefix tuning and on par with LoRA, on billion-parameter Mamba. Here the largest "
             f"Austen gain at L=512 among the state methods is by {best}: {base_long - a[best]['lengths'][1]['loss']:.3f} "
             f"nats with {a[best]['trainable']:,} trainable parameters. Along the sequence, "
             f"initial-state gains {_gain(ini[0])} at position {ini[0]['start']} and "
             f"{_gain(ini[-1])} at {ini[-1]['start']}-{ini[-1]['end']}; offset (h) gains "
             f"{_gain(off[0])} and {_gain(off[-1])}: the per-position question the paper did "
             "not measure."]
    lora, off_h = a["lora:4"], a["state-offset-h"]
    d = paired(off_h["lengths"][1], lora["lengths"][1])
    lines[-1] += (f" LoRA (rank 4 on in_proj/x_proj/out_proj, {lora['trainable']:,} trainable "
                  f"parameters) gains {base_long - lora['lengths'][1]['loss']:.3f} nats at L=512, "
                  f"against {base_long - off_h['lengths'][1]['loss']:.3f} for offset (h) with "
                  f"{off_h['trainable']:,}: loss(offset h) - loss(LoRA) = {d['delta']:+.3f} "
                  f"[{d['low']:+.3f}, {d['high']:+.3f}] (paired), so at this scale LoRA "
                  f"{'is ahead' if d['low'] > 0 else 'is behind' if d['high'] < 0 else 'ties'}.")
    prefix, full = a["prefix:4"], a["full"]
    dp = paired(off_h["lengths"][1], prefix["lengths"][1])
    lines.append(f"- Prefix tuning (4 learned mixer inputs per layer, {prefix['trainable']:,} "
                 f"trainable) gains {base_long - prefix['lengths'][1]['loss']:.3f} nats at L=512; "
                 f"loss(offset h) - loss(prefix) = {fmt_d(dp)} (paired): the paper's 'offset (h) "
                 f"beats prefix' {'holds' if dp['high'] < 0 else 'does not hold' if dp['low'] > 0 else 'is not resolved'} "
                 f"here. Full fine-tuning ({full['trainable']:,} parameters, lr 1e-3) gains "
                 f"{base_long - full['lengths'][1]['loss']:.3f} nats, the ceiling the PEFT methods "
                 "approach.")
    for method in PRUNE_METHODS:
        half = next(r for r in p[method] if r["ratio"] == 0.5)
        lines.append(f"- {method} at ratio 0.5: Δ loss {fmt_d(half['delta_short'])} at L=64, "
                     f"{fmt_d(half['delta_long'])} at L=1024, long - short "
                     f"{fmt_d(half['long_minus_short'])}.")
    same = [r1["ratio"] for r1, r2 in zip(p["dstate-taylor1"], p["dstate-taylor2"])
            if r1["kept_states"] == r2["kept_states"]]
    lines.append(f"- dstate-taylor2 keeps the same states as dstate-taylor1 at ratios {same} "
                 f"(of {PRUNE_RATIOS}): with the empirical-Fisher diagonal the second-order term "
                 "½ F W² is tiny beside g W for this model, so the two rank the states alike.")
    lines += ["- *On Pruning State-Space LLMs* (Ghattas et al. 2025) reports WANDA holding up to "
              "about 50% sparsity and d_state pruning costing little on 1-3B Mamba models; "
              "*Rethinking Token Reduction* (Zhan et al. 2024) reports its hybrid +5.7 to +13.1 "
              "points over EViT/ToMe/PuMer on zero-shot tasks of Mamba-2. Our models are 10^4 "
              "times smaller, trained for minutes on bytes, with a 2-layer Mamba: the direction "
              "of each effect can carry over, the sizes do not, and the token-reduction losses "
              "score different kept positions per method, so they compare only loosely."]
    return "\n".join(lines)


def main() -> int:
    torch.set_num_threads(1)
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    base = pretrain()
    data = {"adapt": adapt_study(base), "prune": prune_study(base), "reduce": reduce_study(base)}
    data["verdict"] = verdict(data)
    minutes = (time.perf_counter() - started) / 60
    (HERE / "adapt-prune.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data)
    write_page(data, minutes)
    print(f"wrote {HERE / 'adapt-prune.md'} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
