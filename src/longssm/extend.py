"""``longssm extend``: the LongSSM experiment, and its sweeps, in one command.

For every combination of state-initialisation policy (default: zero and previous), training
length T (``--seq-len 16,32,...``) and model width (``--d-model 32,64,...``) it trains a model,
evaluates it from L = 16 up to L_max under the reset, stream and shuffled protocols with 95%
intervals, and classifies each curve by Definition 2.1 (``longssm.eval.classify``). Finished runs
and evaluations are skipped on ``--resume``, so an interrupted sweep continues where it stopped.

    OUT/runs/<run>/                the training runs (checkpoints, metrics.csv, config.json)
    OUT/results/<run>.json|csv     loss with interval, perplexity, bits per byte per (protocol, L)
    OUT/extension.png|svg          loss versus L with shaded intervals (LongSSM Figure 4)
    OUT/sweep-T.png|svg            previous-init curves coloured by T (Figure 5; 2+ values of T)
    OUT/size-T-zero.png|svg        zero-init loss at L = 16 and L_max over (d_model, T) (Figure 9)
    OUT/summary.json, OUT/report.md  tables, verdicts and their evidence
    OUT/tb/<run>/                  with --tensorboard: the length curves as TensorBoard scalars
                                   (``eval.tensorboard``), one TensorBoard run per run, overlaid

``<run>`` is the policy (``p-reset:0.5`` -> ``p-reset0.5``) for a single (T, d_model), else
``<policy>-d<d_model>-T<T>``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from longssm.config import ConfigError, RunConfig, apply_overrides

# Presets. "quick": chosen by experiment to show the paper's contrast on a CPU (see README and
# docs/results/extend-quick.md); "full": this tool's CPU-sized default (about an hour);
# "paper": sized like the paper's models (23M parameters with its 16k BPE) for a GPU.
PRESETS = {
    "quick": {
        "model": {"mixer": "s5", "d_model": 64, "n_layers": 2, "d_state": 16},
        "data": {"seq_len": 16, "tokens_per_step": 2048},
        "train": {
            "steps": 300, "lr": 4e-3, "warmup_steps": 30, "eval_every": 100, "eval_batches": 4,
            "checkpoint_every": 100, "log_every": 20,
        },
        "max_length": 8192,
        "n_tokens": 8192,
    },
    "full": {
        "model": {
            "mixer": "mamba", "d_model": 128, "n_layers": 4, "d_state": 16, "expand": 2,
            "d_conv": 0,
        },
        "data": {"seq_len": 32, "tokens_per_step": 4096},
        "train": {
            "steps": 3000, "lr": 3e-3, "warmup_steps": 100, "eval_every": 500,
            "checkpoint_every": 500,
        },
        "max_length": 32768,
        "n_tokens": 65536,
    },
    "paper": {
        "model": {"mixer": "s5", "d_model": 512, "n_layers": 8, "d_state": 256, "mlp_ratio": 2},
        "data": {"seq_len": 16, "tokens_per_step": 32768, "tokenizer": "bpe:16384"},
        "train": {
            "steps": 20000, "lr": 1e-3, "warmup_steps": 1000, "eval_every": 2000,
            "checkpoint_every": 1000, "device": "auto", "autocast": "bf16",
        },
        "max_length": 32768,
        "n_tokens": 65536,
    },
}
SMALLEST_LENGTH = 16


@dataclass
class Combination:
    """One training run of the sweep: policy, training length T and width d_model."""

    policy: str
    seq_len: int
    d_model: int
    name: str
    config: RunConfig


def add_extend_arguments(parser: argparse.ArgumentParser) -> None:
    from longssm.models.mixers import MIXER_NAMES

    parser.description = (
        "Train zero- and previous-initialised models at training length T and compare their "
        "loss up to L_max, with 95% intervals and a Definition 2.1 verdict. Lists sweep: every "
        "combination of --policies, --seq-len and --d-model is run. Extra --model.*/--data.*/"
        "--train.* overrides apply to every run."
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="quick (minutes on a CPU), full (CPU, about an hour) or paper (GPU)")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--corpus", default="python-stdlib", help="corpus spec (default: python-stdlib)")
    parser.add_argument("--init-from", default=None, metavar="SRC",
                        help="post-train every policy from this longssm run or checkpoint, "
                        "local Hugging Face Mamba/Mamba-2 directory, or lora:R/full adapted run "
                        "(merged; architecture and tokenizer from it) instead of random weights")
    parser.add_argument("--mixer", default=None,
                        help=f"one of {', '.join(MIXER_NAMES)} (default: the preset's)")
    parser.add_argument("--seq-len", default=None, help="training length(s) T, e.g. 16 or 16,32,64")
    parser.add_argument("--d-model", default=None, help="model width(s), e.g. 64 or 32,64,128")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run")
    parser.add_argument("--policies", default="zero,previous", help="comma-separated policies")
    parser.add_argument("--max-length", type=int, default=None, help="longest evaluation length")
    parser.add_argument("--n-tokens", type=int, default=None, help="target tokens scored per length")
    parser.add_argument("--protocol", default="all", help="reset, stream, shuffled or all")
    parser.add_argument("--out", default=None, help="results folder (default: results/extend-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted --out folder (finished runs are skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write each run's length curves as TensorBoard scalars under "
                        "OUT/tb/<run> (overlaid by tensorboard --logdir OUT/tb)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """``"16,32"`` -> [16, 32] (distinct, positive); None stays None; one-line ConfigError else."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",")]
    try:
        values = [int(t) for t in items if t]
    except ValueError:
        raise ConfigError(f"{option} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option} must list at least one value, got {text!r}")
    if any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{option} values must be distinct positive integers, got {text!r}")
    return values


def preset_of(args) -> tuple[str, dict]:
    name = args.preset or ("quick" if args.quick else "full")
    if args.quick and args.preset not in (None, "quick"):
        raise ConfigError(f"--quick contradicts --preset {args.preset}")
    return name, PRESETS[name]


def build_config(args, policy: str, seq_len: int | None, d_model: int | None,
                 extra_overrides: list[str]) -> RunConfig:
    """The run config of one combination: preset, then options, then --section.key overrides."""
    _, preset = preset_of(args)
    data = {section: dict(preset[section]) for section in ("model", "data", "train")}
    data["data"]["corpus"] = args.corpus
    data["train"].update(policy=policy, seed=args.seed, progress=not args.quiet)
    if args.mixer:
        data["model"]["mixer"] = args.mixer
    if seq_len is not None:
        data["data"]["seq_len"] = seq_len
        data["data"]["tokens_per_step"] = max(data["data"]["tokens_per_step"], seq_len)
    if d_model is not None:
        data["model"]["d_model"] = d_model
    # zero is a value (refused by validation), not "use the preset"
    if args.steps is not None:
        data["train"]["steps"] = args.steps
    if getattr(args, "init_from", None):
        from longssm.interop.pretrained import apply_init_from

        # the architecture and tokenizer are the checkpoint's, not the preset's
        data["model"] = {k: v for k, v in data["model"].items()
                         if k == "mixer" and args.mixer or k == "d_model" and d_model is not None}
        data["data"].pop("tokenizer", None)
        return RunConfig.from_dict(apply_init_from(apply_overrides(data, extra_overrides),
                                                   args.init_from))
    return RunConfig.from_dict(apply_overrides(data, extra_overrides))


def plan_combinations(args, overrides: list[str]) -> list[Combination]:
    """Every (policy, T, d_model) of the sweep, validated before anything runs."""
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies or len(set(policies)) != len(policies):
        raise ConfigError(f"--policies must list distinct policies, got {args.policies!r}")
    seq_lens = parse_int_list(args.seq_len, "--seq-len") or [None]
    widths = parse_int_list(args.d_model, "--d-model") or [None]
    for option, key, given in (("--seq-len", "data.seq_len", args.seq_len),
                               ("--d-model", "model.d_model", args.d_model)):
        if given is not None and any(o.lstrip("-").startswith(key + "=") for o in overrides):
            raise ConfigError(f"{option} and --{key} both given; use one")
    single = len(seq_lens) == 1 and len(widths) == 1
    if getattr(args, "init_from", None):
        # resolved once: every policy starts from the same checkpoint, even if the source run
        # writes a newer one while the sweep runs or before it is resumed
        args = argparse.Namespace(**{**vars(args), "init_from": pinned_source(args)})
    out = []
    for policy, T, d in itertools.product(policies, seq_lens, widths):
        cfg = build_config(args, policy, T, d, overrides)
        tag = policy.replace(":", "")
        name = tag if single else f"{tag}-d{cfg.model.d_model}-T{cfg.data.seq_len}"
        out.append(Combination(policy, cfg.data.seq_len, cfg.model.d_model, name, cfg))
    return out


def pinned_source(args) -> str:
    """The ``--init-from`` source of the sweep, resolved once (``resolve_init_source``: a run's
    latest checkpoint). On ``--resume`` it is the one the sweep's runs already started from (the
    ``train.init_from`` in ``OUT/runs/*/config.json``), so runs started later use it too."""
    from longssm.interop.pretrained import resolve_init_source

    runs = Path(args.out) / "runs" if args.resume and args.out else None
    started = set()
    for config in sorted(runs.glob("*/config.json")) if runs and runs.is_dir() else []:
        try:
            started.add(json.loads(config.read_text())["train"]["init_from"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if len(started) > 1:
        raise ConfigError(f"the runs in {runs} started from different sources: {sorted(started)}")
    if not started:
        return str(resolve_init_source(args.init_from))
    pinned, given = Path(started.pop()), Path(args.init_from).resolve()
    if pinned.resolve() != given and given not in pinned.resolve().parents:
        raise ConfigError(f"--init-from {args.init_from} is not the source this sweep started "
                          f"from ({pinned}); resume with that one")
    return str(resolve_init_source(pinned))


def evaluation_lengths(max_length: int, seq_lens: list[int]) -> list[int]:
    """16, 32, ..., max_length; one-line ConfigError unless every T has 2+ lengths >= T."""
    from longssm.eval.lengths import power_lengths

    if max_length < SMALLEST_LENGTH:
        raise ConfigError(f"--max-length must be >= {SMALLEST_LENGTH}, got {max_length}")
    lengths = power_lengths(SMALLEST_LENGTH, max_length)
    for T in seq_lens:
        if sum(L >= T for L in lengths) < 2:
            raise ConfigError(
                f"--max-length {max_length} leaves fewer than 2 evaluation lengths >= the training "
                f"length T={T}; the verdict needs at least 2 (use --max-length >= {2 * max(T, 16)})"
            )
    return lengths


def run_extend(args: argparse.Namespace, extra_overrides: list[str] | None = None) -> int:
    """Train, evaluate, classify, plot and report every combination. Returns the exit code."""
    from longssm.eval.lengths import resolve_protocols

    combos = plan_combinations(args, list(extra_overrides or []))
    protocols = resolve_protocols(args.protocol)
    _, preset = preset_of(args)
    max_length = preset["max_length"] if args.max_length is None else args.max_length
    lengths = evaluation_lengths(max_length, [c.seq_len for c in combos])
    n_tokens = preset["n_tokens"] if args.n_tokens is None else args.n_tokens
    if n_tokens < 1:
        raise ConfigError(f"--n-tokens must be >= 1, got {n_tokens}")
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out must name a folder, got an empty string")
    if getattr(args, "tensorboard", False):
        from longssm.eval.tensorboard import check_tensorboard

        check_tensorboard()
    out = Path(args.out or f"results/extend-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ConfigError(f"{out} already exists and is not empty; pass --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    outcomes = [run_one(c, out, lengths, protocols, n_tokens, args) for c in combos]
    figures = draw_figures(outcomes, out)
    summary = make_summary(outcomes, lengths, protocols, time.perf_counter() - started, figures)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(make_report(summary, combos))
    print()
    for group in grouped(summary["runs"]):
        print(comparison_table(group, lengths, protocols))
    for row in summary["runs"]:
        verdict = row["extension"].get("reset")
        if verdict:
            print(f"{row['name']:>18}: {verdict['kind']} (reset): {verdict['reason']}")
    print(f"wrote {out}/report.md, {out}/summary.json and {', '.join(figures.values())}")
    return 0


def run_one(combo: Combination, out: Path, lengths, protocols, n_tokens: int, args) -> dict:
    """Train (or reuse) one run and evaluate it (or reuse its results). Returns its outcome."""
    from longssm.checkpoint import checkpoint_dirs, load_model, parameter_count, resolve_checkpoint
    from longssm.dist import resolve_device
    from longssm.eval.evaluate import EvalSettings, evaluate_run, format_table
    from longssm.eval.results import load_results
    from longssm.train.loop import train

    cfg, run_dir = combo.config, out / "runs" / combo.name
    results_path = out / "results" / f"{combo.name}.json"
    settings = EvalSettings(lengths, protocols, n_tokens=n_tokens, batch_size=8, seed=args.seed,
                            progress=not args.quiet)
    t0 = time.perf_counter()
    done = checkpoint_dirs(run_dir)
    finished = trained_step(run_dir)
    if finished is not None and finished >= cfg.train.steps:
        print(f"[{combo.name}] already trained: step {finished}")
    else:
        print(f"[{combo.name}] training {cfg.model.mixer} d_model={cfg.model.d_model} at "
              f"T={cfg.data.seq_len} for {cfg.train.steps} steps")
        train(cfg, run_dir, resume=bool(done))
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if results_path.is_file() and _same_evaluation(load_results(results_path), settings):
        print(f"[{combo.name}] already evaluated: {results_path}")
        results = load_results(results_path)
        if getattr(args, "tensorboard", False):
            _reused_curves(results, out / "tb" / combo.name)
    else:
        # evaluate where the run trained (train.device: cpu, cuda or auto)
        model, ckpt, meta = load_model(run_dir, device=resolve_device(cfg.train.device, "train.device"))
        print(f"[{combo.name}] evaluating at L = {lengths[0]} ... {lengths[-1]} ({', '.join(protocols)})")
        tb = out / "tb" if getattr(args, "tensorboard", False) else None
        results, _ = evaluate_run(model, ckpt, meta, settings, out / "results", combo.name,
                                  force=True, run_name=combo.name, tensorboard=tb)
        print(format_table(results["records"], results["settings"]["bytes_per_token"] is not None))
    return {"combo": combo, "run_dir": run_dir, "results": results,
            "parameters": parameter_count(resolve_checkpoint(run_dir)),
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0}


def _reused_curves(results: dict, directory: Path) -> None:
    """TensorBoard curves of results reused on ``--resume`` when ``directory`` has none yet (the
    first session ran without ``--tensorboard``); curves already there are left as they are."""
    from longssm.eval.evaluate import describe_verdict
    from longssm.eval.tensorboard import EVENTS, write_length_curves

    if not any(directory.glob(EVENTS)):
        write_length_curves(results, directory, describe_verdict)


def trained_step(run_dir: Path) -> int | None:
    """The step of the newest checkpoint that verifies (None: none does); damaged ones are
    skipped here and left to the trainer's resume, which falls back past them."""
    from longssm.checkpoint import CheckpointError, checkpoint_dirs, verify_checkpoint

    for ckpt in reversed(checkpoint_dirs(run_dir)):
        try:
            return int(verify_checkpoint(ckpt)["step"])
        except CheckpointError:
            continue
    return None


def _same_evaluation(results: dict, settings) -> bool:
    s = results.get("settings", {})
    return (
        results.get("lengths") == settings.lengths
        and results.get("protocols") == settings.protocols
        and s.get("n_tokens") == settings.n_tokens and s.get("seed") == settings.seed
        and all("loss_low" in r for r in results.get("records", []))
    )


def draw_figures(outcomes: list[dict], out: Path) -> dict[str, str]:
    """Figure 4 always; Figure 5 with 2+ training lengths; Figure 9 with 2+ (d_model, T) cells."""
    try:
        from longssm.eval.plots import plot_lengths, plot_size_heatmap, plot_sweep
    except ImportError:
        return {}
    figures = {"extension": str(plot_lengths([o["results"] for o in outcomes], out / "extension")[0])}
    by_policy: dict[str, list[dict]] = {}
    for o in outcomes:
        by_policy.setdefault(o["combo"].policy, []).append(o)
    previous = by_policy.get("previous", [])
    if len({o["combo"].seq_len for o in previous}) > 1:
        figures["sweep"] = str(plot_sweep([o["results"] for o in previous], out / "sweep-T")[0])
    zero = by_policy.get("zero", [])
    if len({(o["combo"].seq_len, o["combo"].d_model) for o in zero}) > 1:
        figures["size_heatmap"] = str(
            plot_size_heatmap([o["results"] for o in zero], out / "size-T-zero")[0]
        )
    return figures


def make_summary(outcomes, lengths, protocols, seconds, figures) -> dict:
    runs = []
    for o in outcomes:
        records, combo = o["results"]["records"], o["combo"]
        per = {
            field: {p: {r["length"]: r.get(field) for r in records if r["protocol"] == p}
                    for p in protocols}
            for field in ("loss", "loss_low", "loss_high")
        }
        runs.append({
            "name": combo.name, "policy": combo.policy, "seq_len": combo.seq_len,
            "d_model": combo.d_model, "mixer": combo.config.model.mixer,
            "parameters": o["parameters"], "run_dir": str(o["run_dir"]),
            "train_seconds": round(o["train_seconds"], 1), "eval_seconds": round(o["eval_seconds"], 1),
            **per, "extension": o["results"]["classification"],
        })
    return {"lengths": lengths, "protocols": protocols, "runs": runs,
            "wall_seconds": round(seconds, 1), "figure": figures.get("extension", ""),
            "figures": figures}


def grouped(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by (d_model, T): the policies trained with the same model and length."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["d_model"], r["seq_len"]), []).append(r)
    return list(groups.values())


def comparison_table(runs: list[dict], lengths, protocols) -> str:
    """Loss ± 95% half-width at each L: one column per (run, protocol) of one (d_model, T)."""
    head = f"d_model {runs[0]['d_model']}, T={runs[0]['seq_len']}; loss ± 95% half-width (nats/token)"
    cols = [(r, p) for r in runs for p in protocols]
    lines = [head, f"{'L':>7} " + " ".join(f"{(r['policy'] + '/' + p):>19}" for r, p in cols)]
    for L in lengths:
        cells = []
        for r, p in cols:
            value, low, high = (r[k][p].get(L) for k in ("loss", "loss_low", "loss_high"))
            if value is None:
                cells.append(f"{'-':>19}")
            elif low is None:
                cells.append(f"{value:>19.4f}")
            else:
                cells.append(f"{value:>10.4f} ± {(high - low) / 2:.4f}")
        lines.append(f"{L:>7} " + " ".join(cells))
    return "\n".join(lines)


def make_report(summary: dict, combos: list[Combination]) -> str:
    cfg = combos[0].config
    lines = [
        "# Length extension: zero- vs previous-initialised hidden states",
        "",
        f"Mixer {cfg.model.mixer}, {cfg.model.n_layers} layers, d_state {cfg.model.d_state}; corpus "
        f"`{cfg.data.corpus}`; {cfg.train.steps} steps of {cfg.data.effective_batch_size * cfg.data.seq_len} "
        f"tokens. Wall time {summary['wall_seconds']:.0f} s. Loss in nats per token on the test "
        "split (lower is better), ± the half-width of its 95% paired block-bootstrap interval:",
        "",
    ]
    for group in grouped(summary["runs"]):
        lines += ["```", comparison_table(group, summary["lengths"], summary["protocols"]), "```", ""]
    lines += [
        "Extension type (Definition 2.1 on the lengths L >= T, decided from paired intervals; "
        "see `longssm.eval.classify`):",
        "",
        "| run | protocol | type | L0 | change L0 -> L_max [95%] | slope / doubling, last half [95%] | gap to best (L_best) | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in summary["runs"]:
        for protocol, v in run["extension"].items():
            lines.append(
                f"| {run['name']} | {protocol} | **{v['kind']}** | {v['l0']} | "
                f"{v['change']:+.4f} [{v['change_low']:+.4f}, {v['change_high']:+.4f}] | "
                f"{v['slope']:+.4f} [{v['slope_low']:+.4f}, {v['slope_high']:+.4f}] | "
                f"{v['gap']:.4f} ({v['l_best']}) | {v['reason']} |"
            )
    lines.append("")
    for key, path in summary["figures"].items():
        lines += [f"![{key}]({Path(path).name})", ""]
    return "\n".join(lines)
