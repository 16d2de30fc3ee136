"""Exceptions that the CLI turns into one-line messages with a non-zero exit."""

from __future__ import annotations


class VlattnError(Exception):
    """Base class of every error vlattn reports to a user as one line (exit code 1)."""


class UnknownNameError(VlattnError, KeyError):
    """A task or attention mechanism name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(VlattnError):
    """Two plugins registered the same name."""


class PluginLoadError(VlattnError):
    """A plugin failed to load while ``VLATTN_STRICT_PLUGINS`` was set."""


class PluginFactoryError(VlattnError):
    """A plugin's factory (``"package.module:Name"``) is malformed or cannot be imported."""


class PluginContractError(VlattnError):
    """A plugin's mechanism or task does not keep the interface vlattn documents for it."""


class ModelFileError(VlattnError):
    """A model file is missing, corrupt, or not a vlattn model."""


class TrainingDivergedError(VlattnError):
    """The loss became NaN or infinite."""


class BundledModelMissingError(ModelFileError):
    """A plugin's bundled model file (``vlattn.model_files.BundledModels``) is not installed."""


class ItemErrors(VlattnError):
    """Some items of a batch failed while the others were done; one line per failed item.

    The CLI prints each line as its own ``vlattn: error:`` message and exits with status 1.
    """

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)
