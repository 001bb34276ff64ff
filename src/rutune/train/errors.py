"""The training stages' input error: the CLI prints its message as one line, without a traceback."""

from __future__ import annotations


class TrainError(ValueError):
    """Bad input to a training stage (data, tokenizer, config links), found before any model loads.

    The message is one line: what is wrong, where (file, stage, YAML path), and how to fix it.
    """


__all__ = ["TrainError"]
