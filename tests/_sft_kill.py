"""`rutune train CONFIG` with a SIGKILL injected at a chosen point (used by test_sft_resume.py).

Usage: python _sft_kill.py CONFIG step_end:N | save:N | final:0
`step_end:N` kills right after optimizer step N; `save:N` kills inside the save of checkpoint-N, after the Trainer
wrote its files but before rutune marked the checkpoint complete; `final:0` kills after the final checkpoint was
written to its temp folder, before it is renamed into place.
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

import rutune.train.trainer as runtime


class Kill(TrainerCallback):
    def __init__(self, where: str, step: int):
        self.where, self.step = where, step

    def _maybe(self, where, state):
        if where == self.where and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe("step_end", state)

    def on_save(self, args, state, control, **kwargs):
        self._maybe("save", state)


def main() -> None:
    config, spec = sys.argv[1], sys.argv[2]
    where, step = spec.split(":")
    original = runtime.stage_callbacks

    def with_kill(*a, **k):
        cbs = original(*a, **k)
        return [Kill(where, int(step)), *cbs]  # before CompletionMarker, so `save:N` leaves N unmarked

    runtime.stage_callbacks = with_kill
    if where == "final":
        import rutune.train.checkpoints as checkpoints

        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoints._replace_dir = die
    from rutune.cli import app

    app(["train", config], standalone_mode=True)


if __name__ == "__main__":
    main()
