"""longssm: state-space language models trained on short contexts that extend to long ones."""

__version__ = "0.1.0"
