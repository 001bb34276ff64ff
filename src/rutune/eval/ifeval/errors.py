"""The one error type of the ruIFEval core: input that cannot be scored, reported as one line naming the row."""

from __future__ import annotations


class IfevalError(ValueError):
    """A ruIFEval row, response or source that cannot be used; the message names where it came from and why."""
