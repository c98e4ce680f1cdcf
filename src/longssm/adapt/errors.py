"""The error type of ``longssm.adapt`` (defined with the adapter modules on the models floor)."""

from __future__ import annotations

from longssm.models.adapters import AdaptError

__all__ = ["AdaptError"]
