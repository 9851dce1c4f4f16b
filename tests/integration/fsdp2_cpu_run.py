"""The entry point with the model sharded by FSDP2 on CPU processes, below Accelerate's gate.

Accelerate runs FSDP only on accelerators: launched on CPUs with an FSDP config it runs DDP (`MULTI_CPU`), which
`DePOConfig` refuses. torch's `fully_shard` itself works on a CPU device mesh over gloo, so this script builds the
FSDP plugin from the shipped `accelerate_configs/fsdp2.yaml` (through Accelerate's own launcher translation of the
config into `FSDP_*` settings), switches the trainer's Accelerator to FSDP once it is built, and runs
`depo_trl.scripts.depo.main` unchanged: the model is prepared by `fsdp2_prepare_model`, trained, checkpointed and
resumed as on GPUs. It writes `fsdp2_rank<r>.json`: whether every parameter of the trained model is a DTensor.

    accelerate launch --multi_gpu --num_processes 2 tests/integration/fsdp2_cpu_run.py --config RECIPE ...
"""

import json
import os
import sys

from accelerate import FullyShardedDataParallelPlugin
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_multi_gpu_env
from torch.distributed.tensor import DTensor

from depo_trl.scripts import depo as entry_point
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.trainer import DePOTrainer


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shipped_fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """The FSDP plugin `accelerate launch --config_file accelerate_configs/fsdp2.yaml` would give a process."""
    config = os.path.join(ROOT, "accelerate_configs", "fsdp2.yaml")
    args = launch_command_parser().parse_args(["--config_file", config, "--num_processes", "2", "script.py"])
    args, _, _ = _validate_launch_command(args)
    settings = {key: value for key, value in prepare_multi_gpu_env(args).items() if key.startswith("FSDP_")}
    os.environ.update(settings)
    return FullyShardedDataParallelPlugin()


class CPUFullyShardedTrainer(DePOTrainer):
    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        # Both states: an AcceleratorState made later copies the type from the PartialState
        self.accelerator.state.fsdp_plugin = shipped_fsdp_plugin()
        self.accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True


if __name__ == "__main__":
    entry_point.DePOTrainer = CPUFullyShardedTrainer
    trainer = entry_point.main(*parse_recipe(sys.argv[1:]))
    sharded = all(isinstance(parameter, DTensor) for parameter in trainer.model.parameters())
    result = {"sharded": sharded, "distributed_type": str(trainer.accelerator.distributed_type)}
    with open(os.path.join(trainer.args.output_dir, f"fsdp2_rank{trainer.accelerator.process_index}.json"), "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # as depo-train on several processes: no process-group teardown
