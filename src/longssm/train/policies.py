"""The state-initialisation policies, as the training floor has always named them.

They live one floor down, in ``longssm.policies``, so that the tagging trainer of ``longssm.tasks``
(a sibling of ``train``) uses the same classes; this module re-exports them for existing callers.
"""

from longssm.policies import (  # noqa: F401
    INPUT_HISTORY_FIELDS,
    POLICY_CLASSES,
    BPTTPolicy,
    FittedNoisePolicy,
    LearnedPolicy,
    NoisePolicy,
    PassingPolicy,
    PResetPolicy,
    PreviousPolicy,
    StatePolicy,
    ZeroPolicy,
    make_policy,
)
