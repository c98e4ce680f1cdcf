"""Sequence-mixing layers with the longssm state protocol (see ``longssm.layers.base``)."""
