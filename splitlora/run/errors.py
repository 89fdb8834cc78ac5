"""Expected failures of a run: the CLI prints them as one ``error:`` line (no torch here).

Besides these, the CLI reports the lower packages' own bases the same way (``models.ModelError``,
``datasets.DataError``, ``splitlora.engine.NumericalError``): see ``cli.USER_ERRORS``.
"""


class UserError(Exception):
    """A failure caused by the user's input or environment (config, data, weights, files).
    The message names what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad configuration file, key or value."""


class WriteError(UserError, OSError):
    """A file or folder that cannot be written (full disk, no permission, a file in the way)."""


def user_message(exc: BaseException) -> str:
    """The message of ``exc`` without a DataLoader worker's embedded traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last
    return text
