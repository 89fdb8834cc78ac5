"""The expected failures of a run, defined in :mod:`splitlora.run.fileio` (imported from here
by the tools and tests that predate the merge)."""
from .fileio import ConfigError, UserError, WriteError  # noqa: F401
