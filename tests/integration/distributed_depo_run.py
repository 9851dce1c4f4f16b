"""Two-process DePO runs for tests/integration/test_distributed.py:
`accelerate launch --multi_gpu --num_processes 2 THIS ...`.

Scenarios (the second argument):
- `one-process-correct`: process 0 gets the rollouts of the prompt that is always rewarded, process 1 those of the
  prompt that never is, so one process distils and the other runs only the zero-weighted long pass. With
  `--forward-tokens 70` the two processes have different forward counts (2 and 0).
- `uneven-forwards`: three prompts per process; process 0's share one long prompt, process 1's have three different
  and longer ones, so the shared-prefix pass with `--forward-tokens 150` plans 1 forward on process 0 and 4 on
  process 1 (DePO-IW; with KD, process 1 has no correct rollout and plans none).
- `overlong-eval`: `evaluate()` on a dataset where one process's long prompt exceeds `max_long_prompt_length`.
- `bad-answer`: the exact-match reward on streamed rows where one process's row has an unusable `answer` ([]).
- `oom-on-process-1`: process 1 runs out of memory in its second long pass, while process 0 goes on into the step's
  collectives; the run must end, not wait.

Each process writes `rank<r>.json`: per step how many of its rollouts passed, the log history and a digest of its
parameters; or, when training stops with a `ValueError`, the message.
"""

import argparse
import hashlib
import json
import os
import sys
import traceback

import torch
from datasets import Dataset

from depo_trl import DePOConfig, DePOTrainer
from depo_trl.model_utils import load_tokenizer
from depo_trl.rewards import em_reward


TEXT = "alba was born in rome . bruno was born in oslo . Question : Where was {} born ?"


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def scenario_rows(scenario: str) -> list[dict]:
    if scenario == "bad-answer":
        return [{"prompt": conversation(TEXT.format(p)), "long_prompt": conversation(TEXT.format(p) * 3),
                 "answer": answer} for p, answer in (("alba", ["rome"]), ("bruno", []))]  # fmt: skip
    if scenario == "one-process-correct":
        return [{"prompt": conversation(TEXT.format(p)), "long_prompt": conversation(TEXT.format(p) * 3)} for p in
                ("alba", "bruno")]  # fmt: skip
    people = ["alba", "alba", "alba", "bruno", "carla", "dario"]
    shared = TEXT.format("alba") * 3
    return [
        {
            "prompt": conversation(TEXT.format(person) + f" {index}"),
            "long_prompt": conversation(shared if index < 3 else TEXT.format(person) * (2 + index)),
        }
        for index, person in enumerate(people)
    ]


def parameter_digest(model) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument(
        "scenario",
        choices=["one-process-correct", "uneven-forwards", "overlong-eval", "bad-answer", "oom-on-process-1"],
    )
    parser.add_argument("output_dir")
    parser.add_argument("--distillation", default="kd")
    parser.add_argument("--forward-tokens", type=int, default=None)
    args = parser.parse_args()

    correct_rollouts_per_step = []

    def reward(prompts, completions, **kwargs):
        rewards = [float("Where was alba" in prompt[-1]["content"]) for prompt in prompts]
        correct_rollouts_per_step.append(int(sum(rewards)))
        return rewards

    rows = scenario_rows(args.scenario)
    prompts_per_process = 3 if args.scenario == "uneven-forwards" else 1
    config = DePOConfig(
        output_dir=args.output_dir,
        distillation=args.distillation,
        per_device_train_batch_size=2 * prompts_per_process,
        per_device_eval_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=3,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        shuffle_dataset=False,
        distillation_forward_tokens=args.forward_tokens,
        max_long_prompt_length=200 if args.scenario == "overlong-eval" else None,
    )
    torch.manual_seed(0)
    dataset = Dataset.from_list(rows)
    trainer = DePOTrainer(
        model=args.model_dir,
        reward_funcs=em_reward if args.scenario == "bad-answer" else reward,
        args=config,
        # Streamed, the bad answer reaches one process's batch: a dataset at hand is refused when the trainer is built
        train_dataset=dataset.to_iterable_dataset() if args.scenario == "bad-answer" else dataset,
        processing_class=load_tokenizer(args.model_dir),
    )
    assert trainer.accelerator.num_processes == 2, "expected a two-process launch"
    rank = trainer.accelerator.process_index
    if args.scenario == "oom-on-process-1" and rank == 1:
        run, windows = trainer.long_pass.run, []

        def out_of_memory(*run_args, **run_kwargs):
            windows.append(True)
            if len(windows) == 2:
                raise torch.OutOfMemoryError("out of memory in the long pass (injected)")
            return run(*run_args, **run_kwargs)

        trainer.long_pass.run = out_of_memory
    result = {}
    try:
        if args.scenario == "overlong-eval":
            # A dataset given to evaluate() directly was never filtered at construction
            evaluation = rows[:1] + [{"prompt": rows[1]["prompt"], "long_prompt": conversation(TEXT * 40)}]
            trainer.evaluate(eval_dataset=Dataset.from_list(evaluation))
        else:
            trainer.train()
            result = {
                "correct_rollouts_per_step": correct_rollouts_per_step,
                "log_history": trainer.state.log_history,
                "parameters": parameter_digest(trainer.model),
            }
    except ValueError as error:
        result = {"error": str(error)}
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    # Same exits as depo_trl.scripts.depo.cli: skip the process group's teardown, which can hang under load (gloo),
    # and hide a failure from the launcher while it does
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)
