"""Run the train stages of a config (JSON file) in a fresh process: for the SIGKILL-resume and 2-process tests.

`python tests/_simpo_driver.py CONFIG.json [KILL_AT_STEP]` — with KILL_AT_STEP the process SIGKILLs itself at the
end of that optimizer step (after any checkpoint of an earlier step is complete), like a crash or an OOM kill.
Under torchrun every process runs this; the Trainer sets up gloo DDP on CPU from the environment.
"""

import json
import os
import signal
import sys


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from transformers import TrainerCallback

    from rutune.config import parse_config
    from rutune.train import trainer as runtime
    from rutune.train.stages import run_training

    cfg = parse_config(json.loads(open(sys.argv[1], encoding="utf-8").read()))
    if len(sys.argv) > 2:
        kill_at = int(sys.argv[2])

        class Crash(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        make = runtime.stage_callbacks
        runtime.stage_callbacks = lambda *a, **k: [*make(*a, **k), Crash()]
    run_training(cfg, show_progress=False)


if __name__ == "__main__":
    main()
