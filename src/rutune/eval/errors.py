"""The one error type of `rutune.eval`: bad input (data, model path, config), shown by the CLI as one line."""

from __future__ import annotations


class EvalError(ValueError):
    """An eval input that cannot be used; the message names the file, row or option and the fix."""
