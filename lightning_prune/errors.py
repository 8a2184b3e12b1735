"""Exceptions raised by lightning_prune. Every message names the problem and the fix."""

from __future__ import annotations


class PruningError(RuntimeError):
    """Base class of every error lightning_prune raises on purpose."""


class ExampleInputError(PruningError, ValueError):
    """The example inputs cannot be run through the model."""


class UntraceableModelError(PruningError):
    """Neither torch.fx nor torch.export could capture the model's graph."""


class NothingToPruneError(PruningError):
    """The model has no channel group that can be gated."""


class NotAugmentedError(PruningError):
    """An operation needs gates, but the model was never augmented."""


class CollapseError(PruningError):
    """Collapse would not reproduce the gated model, so it was refused."""


class PlanMismatchError(PruningError, ValueError):
    """A channel plan does not fit the model it is applied to."""


class CheckpointMismatchError(PruningError, ValueError):
    """A checkpoint or weights file does not fit the run or the model it is loaded into."""


class ArgumentError(PruningError, ValueError):
    """An argument is invalid (a gate option, an ``exclude`` pattern); raised before any work."""


class UnknownNameError(PruningError, KeyError):
    """A name (gate family, schedule, penalty, model) is not registered.

    Unlike a plain ``KeyError``, its message prints as written, without quotes.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ExportError(PruningError):
    """A network cannot be exported for deployment (ONNX); the message says why and the fix."""


class ExportExistsError(ExportError, FileExistsError):
    """The export target exists; lightning_prune never overwrites a file."""


class MissingExtraError(ExportError, ImportError):
    """An optional extra (e.g. ``lightning-prune[deploy]``) is needed but not installed."""
