"""Training with carried state: policies, optimiser groups, the loop, exact resume.

``train(cfg, run_dir, resume=False, log=print) -> TrainResult`` is the entry point; it raises
``NonFiniteError`` when training diverges.
"""

from longssm.train.loop import NonFiniteError, TrainResult, train

__all__ = ["NonFiniteError", "TrainResult", "train"]
