"""The optional ``deploy`` extra: which of its packages are installed, and a clear error if not.

``pip install lightning-prune[deploy]`` installs ``onnx``, ``onnxscript`` (the
``torch.onnx.export(..., dynamo=True)`` exporter needs it) and ``onnxruntime``. Nothing here
imports them at ``import lightning_prune`` time.

Example:
    >>> from lightning_prune.deploy.extra import DEPLOY_PACKAGES, missing_packages
    >>> DEPLOY_PACKAGES
    ('onnx', 'onnxscript', 'onnxruntime')
    >>> set(missing_packages()) <= set(DEPLOY_PACKAGES)
    True
"""

from __future__ import annotations

import importlib.util

from lightning_prune.errors import MissingExtraError

__all__ = ["DEPLOY_PACKAGES", "INSTALL_HINT", "deploy_available", "missing_packages", "require"]

#: The import names of the packages the ``deploy`` extra installs.
DEPLOY_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
#: The command that installs them.
INSTALL_HINT = "pip install lightning-prune[deploy]"


def missing_packages() -> list[str]:
    """The packages of the ``deploy`` extra that cannot be imported, in declaration order."""
    return [name for name in DEPLOY_PACKAGES if importlib.util.find_spec(name) is None]


def deploy_available() -> bool:
    """Whether ONNX export and ONNX Runtime timing can run (every deploy package is installed)."""
    return not missing_packages()


def require(feature: str) -> None:
    """Raise :class:`~lightning_prune.errors.MissingExtraError` unless the extra is installed.

    Args:
        feature: what needs it, for the message (e.g. ``"lp.export_onnx"``).

    Raises:
        MissingExtraError: naming the missing packages and ``pip install lightning-prune[deploy]``.

    Example:
        >>> require("lp.export_onnx") if deploy_available() else None
    """
    missing = missing_packages()
    if missing:
        raise MissingExtraError(
            f"{feature} needs the optional deploy extra ({', '.join(missing)} not installed): "
            f"run `{INSTALL_HINT}` (or `pip install {' '.join(missing)}`)."
        )
