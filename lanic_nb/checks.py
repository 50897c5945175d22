"""Validation shared by the stages' config dataclasses (called from their ``__post_init__``)."""

from __future__ import annotations

from collections.abc import Iterable

from lanic_nb.manifest import SPLITS


def require_at_least_one(cfg: object, names: Iterable[str]) -> None:
    """Raise ValueError naming the first field of ``cfg`` among ``names`` that is below 1."""
    for name in names:
        value = getattr(cfg, name)
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_selection(split: str, max_images: int | None) -> None:
    """Raise ValueError naming ``split`` or ``max_images`` when they cannot select images for
    ``artifacts.load_split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_images is not None and int(max_images) < 1:
        raise ValueError(f"max_images must be None or >= 1, got {max_images}")
