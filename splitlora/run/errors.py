"""Expected failures: the CLI prints them as one ``error:`` line (light module: no torch).

The method package raises :class:`UserError` and its subclasses. The packages below it,
``models`` and ``datasets``, know nothing of this one: they raise their own error bases
(``models.ModelError``, ``datasets.DataError``), which :func:`is_user_error` recognises.
"""
import sys


class UserError(Exception):
    """A failure caused by the user's input or environment (config, data, weights, numerics).

    The CLI reports it as one ``error: <message>`` line and exit status 2, no traceback;
    the message names what is wrong and how to fix it.
    """


class NumericalError(UserError, FloatingPointError):
    """A non-finite loss or statistic: the run stops, its last checkpoint is kept."""


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


# The lower packages' error bases, by module and class name (looked up, never imported: a
# module that is not loaded cannot have raised).
_LOWER_ERRORS = (("models.backbone", "ModelError"), ("datasets.folder", "DataError"))


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an expected failure (reported as one line, not a traceback)."""
    if isinstance(exc, UserError):
        return True
    for module, name in _LOWER_ERRORS:
        base = getattr(sys.modules.get(module), name, None)
        if base is not None and isinstance(exc, base):
            return True
    return False
