"""TensorBoard event files of a run (``train.tensorboard = true``): ``RUN/tb/events.out.tfevents.*``.

Scalars, each at its optimiser step (the CSV and ``diagnostics.jsonl`` stay as they are):

    train/loss  train/lr  train/grad_norm  train/tokens_per_s      every logged step
    val/loss_reset  val/loss_stream                                 every validation
    diag/grad_weight_ratio  state/max_norm/layer{i}                 every diag_every steps
    eig/max_re/layer{i}  eig/max_abs/layer{i}                       (continuous-time eigenvalues)

Written with ``torch.utils.tensorboard`` (it needs the ``tensorboard`` package: the
``tensorboard`` extra). On resume the writer purges events after the checkpoint's step, so a
resumed run shows one curve.
"""

from __future__ import annotations

from pathlib import Path

from longssm.config import ConfigError

INSTALL_HINT = "train.tensorboard needs the tensorboard package: pip install 'longssm[tensorboard]'"


def check_tensorboard() -> None:
    """ConfigError (one line) when TensorBoard logging cannot be written."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


class TensorBoardLog:
    """A ``SummaryWriter`` on ``directory`` fed with metrics rows and diagnostics records."""

    def __init__(self, directory: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # events after the resumed step (written before a crash) are hidden by TensorBoard
        self.writer = SummaryWriter(str(directory), purge_step=start_step + 1 if start_step else None)

    def metrics(self, row: dict) -> None:
        step = row["step"]
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            self.writer.add_scalar(f"train/{key}", float(row[key]), step)
        for key in ("val_loss_reset", "val_loss_stream"):
            if row.get(key) not in ("", None):
                self.writer.add_scalar(f"val/{key.removeprefix('val_')}", float(row[key]), step)
        self.writer.flush()

    def diagnostics(self, record: dict) -> None:
        step = record["step"]
        self.writer.add_scalar("diag/grad_weight_ratio", record["grad_weight_ratio"], step)
        for i, norm in enumerate(record.get("state_max_norm") or []):
            self.writer.add_scalar(f"state/max_norm/layer{i}", float(norm), step)
        for i, stats in enumerate(record.get("transition") or []):
            for key, value in stats.items():
                self.writer.add_scalar(f"eig/{key.removesuffix('_eig')}/layer{i}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
