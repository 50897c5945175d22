"""Validation shared by the stages' config dataclasses (called from their ``__post_init__``)."""

from __future__ import annotations

from collections.abc import Iterable


def require_at_least_one(cfg: object, names: Iterable[str]) -> None:
    """Raise ValueError naming the first field of ``cfg`` among ``names`` that is below 1."""
    for name in names:
        value = getattr(cfg, name)
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
