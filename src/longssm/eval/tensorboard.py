"""The length curves of ``longssm eval --tensorboard`` as TensorBoard scalars.

One TensorBoard run per results file, in ``BASE/<stem>`` (``stem`` the results file's stem, e.g.
``results-ckpt-00000300`` or the ``--name``; ``BASE`` is ``RUN/tb/eval`` by default, so
``tensorboard --logdir RUN/tb`` shows the training curves and the evaluations together, and
``OUT/tb`` with ``--out OUT``, so several models evaluated into one folder overlay). The x-axis
(TensorBoard's step) is the evaluation length L:

    eval/<protocol>/loss            mean loss in nats per token at L
    eval/<protocol>/loss_low        lower end of its interval (``settings.confidence``, 95%)
    eval/<protocol>/loss_high       upper end
    eval/<protocol>/bits_per_byte
    eval/<protocol>/verdict         (text) the Definition 2.1 verdict and its evidence

TensorBoard's x-axis is linear, which crowds 16 .. 1024 into the first few percent of a 16 .. 32k
curve; the same four scalars are also written under ``eval_log2L/<protocol>/<key>`` with step
``round(100 log2 L)`` (``LOG_STEP``): 400 is L = 16, 1000 is 1024, 1500 is 32768.

The JSON/CSV stay the data; this is a view of them. Needs the ``tensorboard`` package.
"""

from __future__ import annotations

import math
from pathlib import Path

from longssm.eval.errors import EvalError

INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install 'longssm[tensorboard]'"
EVENTS = "events.out.tfevents.*"
SCALARS = ("loss", "loss_low", "loss_high", "bits_per_byte")


def log_step(length: int) -> int:
    """The step of length L on the ``eval_log2L`` axis: round(100 log2 L)."""
    return round(100 * math.log2(length))


def check_tensorboard() -> None:
    """EvalError (one line) when TensorBoard event files cannot be written."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise EvalError(INSTALL_HINT) from None


def curves_dir(base: Path, stem: str, force: bool = False) -> Path:
    """``base/stem``, or the first ``base/stem-2``, ``-3``, ... holding no event files; with
    ``force`` the event files of ``base/stem`` are removed instead (like the results files)."""
    directory = base / stem
    if force:
        for old in directory.glob(EVENTS):
            old.unlink()
        return directory
    i = 2
    while any(directory.glob(EVENTS)):
        directory = base / f"{stem}-{i}"
        i += 1
    return directory


def write_length_curves(results: dict, directory: Path, describe=None) -> Path:
    """Write the records of one results document as scalars into ``directory``; with
    ``describe`` (verdict -> one line, ``evaluate.describe_verdict``) the verdicts as text."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    try:
        for record in sorted(results["records"], key=lambda r: (r["protocol"], r["length"])):
            length, protocol = int(record["length"]), record["protocol"]
            for key in SCALARS:
                if record.get(key) is not None:
                    value = float(record[key])
                    writer.add_scalar(f"eval/{protocol}/{key}", value, length)
                    writer.add_scalar(f"eval_log2L/{protocol}/{key}", value, log_step(length))
        for protocol, verdict in results.get("classification", {}).items():
            if verdict and describe is not None:
                writer.add_text(f"eval/{protocol}/verdict", describe(verdict))
    finally:
        writer.close()
    return directory
