"""The error every expected failure derives from (light module: no torch import)."""


class UserError(Exception):
    """A failure caused by the user's input or environment (config, data, weights, numerics).

    The CLI reports it as one ``error: <message>`` line and exit status 2, no traceback;
    the message names what is wrong and how to fix it.
    """
