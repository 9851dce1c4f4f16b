"""Two-process DePO run for tests/test_distributed.py: `accelerate launch --cpu --num_processes 2 THIS MODEL_DIR OUT`.

Each step, process 0 gets the rollouts of the prompt that is always rewarded and process 1 those of the prompt that
never is, so one process distils and the other runs only the zero-weighted long pass. With a third argument (the
`distillation_micro_batch_size`, e.g. 1) the two processes have different chunk counts (2 and 0). Each process writes,
per step, how many of its rollouts passed the threshold.
"""

import json
import os
import sys

from datasets import Dataset

from depo_trl import DePOConfig, DePOTrainer
from depo_trl.model_utils import load_tokenizer


def main(model_dir: str, output_dir: str, distillation_micro_batch_size: int | None) -> None:
    correct_rollouts_per_step = []

    def reward(prompts, completions, **kwargs):
        rewards = [float("Where was alba" in prompt[-1]["content"]) for prompt in prompts]
        correct_rollouts_per_step.append(int(sum(rewards)))
        return rewards

    text = "alba was born in rome . bruno was born in oslo . Question : Where was {} born ?"
    rows = [
        {
            "prompt": [{"role": "user", "content": text.format(person)}],
            "long_prompt": [{"role": "user", "content": text.format(person) * 3}],
        }
        for person in ("alba", "bruno")
    ]
    args = DePOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        shuffle_dataset=False,
        distillation_micro_batch_size=distillation_micro_batch_size,
    )
    trainer = DePOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(model_dir),
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    assert trainer.accelerator.num_processes == 2, "expected a two-process launch"
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(
            {"correct_rollouts_per_step": correct_rollouts_per_step, "log_history": trainer.state.log_history}, handle
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    # Same exit as depo_trl.depo.cli: skip the process group's teardown, which can hang under load (gloo)
    sys.stdout.flush()
    os._exit(0)
