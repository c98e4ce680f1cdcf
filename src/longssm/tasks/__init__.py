"""A synthetic capability suite: what a state can track at unseen lengths.

Exact NumPy generators (formal languages with next-character-set labels, finite-group word
problems, path signatures, StableSSM linear functionals, associative recall / passkey), a tagging
model over the library's blocks, a trainer with length generalisation built in, and the suite
(``longssm task``). See docs/tasks.md.
"""

from longssm.tasks.registry import TASKS, Batch, Task, get_task
from longssm.tasks.suite import run_suite, run_task
from longssm.tasks.trainer import TaskRunConfig, run

__all__ = ["TASKS", "Batch", "Task", "TaskRunConfig", "get_task", "run", "run_suite", "run_task"]
