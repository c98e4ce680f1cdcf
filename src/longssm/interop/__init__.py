"""Conversion between longssm models and other libraries' checkpoints (local files only)."""
