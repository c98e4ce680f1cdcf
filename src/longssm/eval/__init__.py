"""Evaluation: perplexity versus length, per-position curves, Effective Remembrance, the
Definition 2.1 classifier, results files and figures.

Example:
    records = evaluate_lengths(model, tokens, [16, 64, 256, 1024], protocol="reset")
    verdict = classify_extension([r["length"] for r in records], [r["loss"] for r in records])
    verdict.kind  # "strong", "weak" or "none"
"""

from longssm.eval.classify import DEFAULT_TOL, Extension, classify_extension
from longssm.eval.effrem import default_drops, effective_remembrance
from longssm.eval.errors import EvalError
from longssm.eval.lengths import evaluate_lengths, make_plans, resolve_protocols
from longssm.eval.positions import log_bin_edges, position_curve
from longssm.eval.results import (
    FORMAT,
    find_results,
    load_results,
    machine_info,
    make_results,
    read_csv,
    records_of,
    save_results,
)
from longssm.eval.scoring import ChunkScore, chunk_bounds, score_plan
from longssm.eval.windows import PROTOCOLS, WindowPlan, plan_windows, shuffled_donors

__all__ = [
    "DEFAULT_TOL",
    "FORMAT",
    "PROTOCOLS",
    "ChunkScore",
    "EvalError",
    "Extension",
    "WindowPlan",
    "chunk_bounds",
    "classify_extension",
    "default_drops",
    "effective_remembrance",
    "evaluate_lengths",
    "find_results",
    "load_results",
    "log_bin_edges",
    "machine_info",
    "make_plans",
    "make_results",
    "plan_windows",
    "position_curve",
    "read_csv",
    "records_of",
    "resolve_protocols",
    "save_results",
    "score_plan",
    "shuffled_donors",
]
