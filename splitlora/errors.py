"""The error every expected failure derives from (light module: no torch import)."""


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
