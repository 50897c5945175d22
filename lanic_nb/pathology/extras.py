"""The pathology study's optional dependencies (the ``pathology`` extra: scanpy, anndata, h5py, timm).

Only the pathology code paths that need them import them, through ``import_extra``, so every other part of
lanic_nb imports without them; a missing one fails with the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PATHOLOGY_EXTRA: tuple[str, ...] = ("scanpy", "anndata", "h5py", "timm")
INSTALL_HINT = "pip install 'lanic-nb[pathology]'"


def import_extra(name: str) -> ModuleType:
    """Import one module of the pathology extra, or raise ImportError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(
            f"{name} is needed by the pathology study (lanic_nb.pathology) but is not installed: "
            f"{INSTALL_HINT} (or `make`, which installs .[dev,pathology])"
        ) from e


def require_extra(names: tuple[str, ...] = PATHOLOGY_EXTRA) -> None:
    """Fail at once, before any training, when a module the pathology stage will need is missing."""
    for name in names:
        import_extra(name)
