"""The error a user sees for a rejected input; it imports nothing, so every layer may raise it."""

from __future__ import annotations


class InputError(ValueError):
    """A rejected input; `str()` is the message the user sees, starting with the input's name."""

    def __init__(self, name: str | None, message: str):
        self.input_name = name
        super().__init__(message if name is None else f"{name} {message}")
