"""Evaluation: perplexity versus length, per-position curves, Effective Remembrance, the
Definition 2.1 classifier, results files and figures.

Example:
    records = evaluate_lengths(model, tokens, [16, 64, 256, 1024], protocol="reset")
    records[0]["loss"], records[0]["loss_low"], records[0]["loss_high"]   # 95% interval
    verdict = classify_records(records, min_length=16)   # paired-bootstrap Definition 2.1
    verdict.kind, verdict.reason  # "strong" / "weak" / "none", and why
"""

from longssm.eval.classify import Extension, classify_extension, classify_records
from longssm.eval.effrem import default_drops, effective_remembrance
from longssm.eval.errors import EvalError
from longssm.eval.evaluate import EvalSettings, evaluate_run, format_table, load_split
from longssm.eval.intervals import add_intervals
from longssm.eval.lengths import (
    evaluate_lengths,
    evaluate_lengths_sharded,
    make_plans,
    parse_lengths,
    power_lengths,
    resolve_protocols,
)
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
    "FORMAT",
    "PROTOCOLS",
    "ChunkScore",
    "EvalSettings",
    "EvalError",
    "Extension",
    "WindowPlan",
    "add_intervals",
    "chunk_bounds",
    "classify_extension",
    "classify_records",
    "default_drops",
    "effective_remembrance",
    "evaluate_lengths",
    "evaluate_lengths_sharded",
    "evaluate_run",
    "format_table",
    "find_results",
    "load_results",
    "load_split",
    "log_bin_edges",
    "machine_info",
    "make_plans",
    "make_results",
    "parse_lengths",
    "plan_windows",
    "position_curve",
    "power_lengths",
    "read_csv",
    "records_of",
    "resolve_protocols",
    "save_results",
    "score_plan",
    "shuffled_donors",
]
