"""The error every user-facing failure derives from, so the CLI can show it without a traceback."""


class EltaError(Exception):
    """Bad input or configuration: the message names the file, row or key and what was expected."""


class ConfigError(EltaError, ValueError):
    """A configuration that cannot run: names the key or file and what was expected."""


def require(ok: bool, key: str, expected: str, value: object) -> None:
    """Raise :class:`ConfigError` ``"<key> must be <expected>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
