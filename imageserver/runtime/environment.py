"""Settings read from the environment: ``NAME``, or ``NAME_FILE`` naming a
file that holds the value (so that a secret need be neither a flag, which
any user can read in the process list, nor in the environment)."""

from __future__ import annotations

from collections.abc import Mapping


def value_of(variable: str, environ: Mapping[str, str]) -> str | None:
    """``variable``'s value, from itself or from the file ``variable_FILE``
    names (its final newline dropped); None when neither is set. Raises
    ValueError, naming the variable, when both are set or the file cannot be
    read."""
    if variable + "_FILE" in environ:
        if variable in environ:
            raise ValueError(f"both {variable} and {variable}_FILE are set")
        path = environ[variable + "_FILE"]
        try:
            with open(path, encoding="utf-8") as file:
                return file.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{variable}_FILE: cannot read {path}: {e}") from None
    return environ.get(variable)
