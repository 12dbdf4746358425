"""The error every user-facing failure derives from, so the CLI can show it without a traceback."""


class EltaError(Exception):
    """Bad input or configuration: the message names the file, row or key and what was expected."""
