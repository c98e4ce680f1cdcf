"""``longssm prune``: prune a trained run and save the result as a plain run directory.

    report = prune_run("runs/base", "wanda", 0.5, "runs/base-wanda50", calibration=64)

The pruned run ``out/checkpoints/<same checkpoint name>/`` loads with
``longssm.checkpoint.load_model`` (and so ``eval``, ``generate``, ``extend``) like any run; its
``meta.json`` keeps the base's metadata with the new model config and a ``pruned`` record;
``out/prune.json`` holds the report: parameters, non-zero parameters, tokens/s and held-out loss
(95% window-bootstrap intervals) before and after.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from longssm.adapt.adapter import check_free
from longssm.adapt.prune import calibration_rows, check_prune, count_parameters, prune_model
from longssm.adapt.score import paired_gain, summarise, window_nll
from longssm.adapt.tune import target_corpus
from longssm.checkpoint import load_model, save_checkpoint


def measure(model, tokens, length: int, n_windows: int) -> tuple[dict, float, object]:
    """Held-out loss summary, tokens per second of the scoring forward passes, per-window NLL."""
    start = time.perf_counter()
    nll = window_nll(model, tokens, length, n_windows)
    seconds = time.perf_counter() - start
    return summarise(nll), nll.size / seconds, nll


def prune_run(run, method: str, ratio: float, out, calibration: int = 32,
              eval_length: int | None = None, eval_windows: int = 32,
              device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Prune ``run`` by ``method`` at ``ratio`` with ``calibration`` windows of its train split;
    write the pruned run to ``out`` (which must not exist). Returns the report."""
    check_prune(method, ratio)
    out = check_free(out)
    model, ckpt, meta = load_model(run, device=device)
    corpus = meta["config"].get("data", {}).get("corpus", "python-stdlib")
    seq_len = int(meta["config"].get("data", {}).get("seq_len", 64))
    eval_length = eval_length or 4 * seq_len
    test = target_corpus(meta, corpus, "test", model.cfg.vocab_size).tokens
    train = target_corpus(meta, corpus, "train", model.cfg.vocab_size).tokens
    rows = calibration_rows(train, calibration, seq_len, seed).to(device)
    before_params = count_parameters(model)
    before, before_tps, before_nll = measure(model, test, eval_length, eval_windows)
    pruned, dropped = prune_model(model, method, ratio, rows)
    after, after_tps, after_nll = measure(pruned, test, eval_length, eval_windows)
    report = {
        "base": str(Path(ckpt).resolve()), "method": method, "ratio": ratio,
        "calibration": {"windows": calibration, "length": seq_len, "split": "train"},
        "eval": {"split": "test", "length": eval_length, "windows": eval_windows},
        "before": {**before_params, **before, "tokens_per_second": before_tps},
        "after": {**count_parameters(pruned), **after, "tokens_per_second": after_tps},
        "loss_increase": {k.replace("gain", "increase"): -v for k, v in
                          paired_gain(before_nll, after_nll).items()},
        **dropped,
    }
    config = dict(meta["config"], model=pruned.cfg.to_dict())
    pruned_meta = dict(meta, config=config, pruned={k: v for k, v in report.items()
                                                     if k not in ("before", "after")})
    pruned_meta.pop("format_version", None)
    save_checkpoint(out / "checkpoints" / Path(ckpt).name, pruned, pruned_meta)
    (out / "prune.json").write_text(json.dumps(report, indent=1))
    return report
