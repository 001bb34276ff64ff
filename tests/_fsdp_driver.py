"""Run every train stage of a config (JSON file) in a fresh process, the way a launcher starts each rank.

`python tests/_fsdp_driver.py CONFIG.json [KILL_AT_STEP]` (or the same under `accelerate launch` / `torchrun`).
With KILL_AT_STEP every process SIGKILLs itself right after that optimizer step, like an OOM kill of the job; the
intermediate checkpoints saved before it are complete (`CompletionMarker` runs inside the save, before the step ends).
With `RUTUNE_PROBE=DIR` each rank writes `DIR/rank-R.json` when training begins: the accelerator's distributed
type, the parameters' tensor class and how many of the model's elements this rank holds, so a test can prove the
model really was sharded (FSDP2 turns parameters into DTensors holding 1/N of each tensor) rather than replicated.
With `RUTUNE_FSDP_ON_CPU=1` the process runs FSDP over gloo on CPU (`fsdp_on_cpu`). Torch runs one thread per
process: the test machines have two shared cores.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def fsdp_on_cpu() -> None:
    """Let accelerate pick FSDP on CPU processes, as it does on GPUs.

    accelerate 1.15 reads `ACCELERATE_USE_FSDP` (set by `accelerate launch` from fsdp.yaml) and builds the FSDP
    plugin, but `AcceleratorState.__init__` only switches to `DistributedType.FSDP` when the process group is
    MULTI_GPU/NPU/XPU/…; on CPU processes (MULTI_CPU, gloo) it silently keeps plain DDP. The FSDP2 code path itself
    (`fully_shard` over a CPU device mesh, all-gather and reduce-scatter over gloo) runs on CPU, so this promotes the
    state after accelerate's own init, with the plugin it built — nothing else in the launch changes. The type is
    written into PartialState's shared state too: every later `AcceleratorState()` copies it from there.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def main() -> None:
    import torch

    torch.set_num_threads(1)
    if os.environ.get("RUTUNE_FSDP_ON_CPU") == "1":
        fsdp_on_cpu()
    from accelerate.state import AcceleratorState
    from transformers import TrainerCallback

    from rutune.config import parse_config
    from rutune.train import trainer as runtime
    from rutune.train.stages import run_training

    class Crash(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    class Probe(TrainerCallback):
        def __init__(self, folder: str):
            self.folder = folder

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            params = list(model.parameters())
            local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in params)
            report = {"rank": args.process_index, "world_size": args.world_size,
                      "distributed_type": str(AcceleratorState().distributed_type),
                      "param_class": type(params[0]).__name__, "local_numel": local,
                      "full_numel": sum(p.numel() for p in params)}
            with open(os.path.join(self.folder, f"rank-{args.process_index}.json"), "w", encoding="utf-8") as f:
                json.dump(report, f)

    extra = []
    if len(sys.argv) > 2:
        extra.append(Crash(int(sys.argv[2])))
    if os.environ.get("RUTUNE_PROBE"):
        extra.append(Probe(os.environ["RUTUNE_PROBE"]))
    make = runtime.stage_callbacks
    runtime.stage_callbacks = lambda *a, **k: [*make(*a, **k), *extra]
    cfg = parse_config(json.loads(open(sys.argv[1], encoding="utf-8").read()))
    run_training(cfg, show_progress=False)


if __name__ == "__main__":
    main()
