"""The expected failures of a run (defined in :mod:`splitlora.run.fileio`; older imports)."""
from .fileio import ConfigError, UserError, WriteError  # noqa: F401
