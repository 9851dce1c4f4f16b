"""Step cost of DePO against long-context RL, and of the shared-prefix long pass against the naive one.

    python benchmarks/step_cost.py                       # CPU, tiny model, long prompts ~10x the short ones
    python benchmarks/step_cost.py --device cuda         # the same on a GPU

One process trains each arm from the same random tiny Qwen2 on toy-world rows whose long prompts are about 10x the
short ones, with a reward that marks half of each prompt's rollouts correct (4 of 8 distilled). The arms take turns:
each round trains every arm for a warm-up step and `--steps` measured ones, `--rounds` times, so a slow spell of a
shared machine falls on all arms alike. It prints per arm the step's wall time and the long pass's (the fastest
measured step: the steps are alike in shape, and other work on the machine only slows one down), peak resident
memory growth, and ratios to RL-on-long. The last line is
`depo_step_ratio=<DePO shared-prefix step / RL-on-long step> long_pass_ratio=<shared-prefix long pass / naive>`.

How the long pass alone scales with the context and the rollout count, on CPU or GPU, is
`benchmarks/long_pass_scaling.py`.
"""

import os
import statistics
import threading
import time
import warnings

import psutil
import torch
from datasets import Dataset

from depo_trl.arms import ARMS
from depo_trl.toy.training import StepTimer
from depo_trl.user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors


def alternate_correct(completions, **kwargs):
    """Half of each group correct, whatever the model says: the cost of distilling 4 of 8 rollouts per prompt."""
    return [float(index % 2 == 0) for index in range(len(completions))]


class PeakMemory:
    """Peak memory growth of this process while the block runs: the resident set sampled every 5 ms on a CPU, the
    allocator's peak on a GPU."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.growth_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
            return
        self.running = False
        self.thread.join()
        self.growth_mb = (self.peak - self.start) / 2**20


def measure_arm(name: str, settings: dict, rows: list, tokenizer, args) -> dict[str, list[float] | float]:
    """Train one arm for 1 + `args.steps` steps: the measured steps' times and long-pass forward times (the warm-up
    step's left out), peak RSS growth."""
    from depo_trl import DePOTrainer
    from depo_trl.models.tiny import build_tiny_qwen2
    from depo_trl.toy.training import cpu_depo_config

    torch.manual_seed(0)
    model = build_tiny_qwen2(
        tokenizer,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
    )
    config = cpu_depo_config(
        os.path.join(args.run_dir, name),
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.completion_tokens,
        generation_kwargs={"min_new_tokens": args.completion_tokens},
        max_steps=args.steps + 1,
        use_cpu=args.device == "cpu",
        disable_tqdm=True,
        distillation_forward_tokens=args.forward_tokens,
        **settings,
    )
    timer = StepTimer()
    trainer = DePOTrainer(
        model=model,
        reward_funcs=alternate_correct,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    with PeakMemory(args.device) as memory:
        trainer.train()
    # The long pass's backward runs inside the step's backward: `depo/long_pass_seconds` is its forward only
    long_pass = [log["depo/long_pass_seconds"] for log in trainer.state.log_history if "depo/long_pass_seconds" in log]
    return {"step": timer.step_seconds[1:], "long_pass_forward": long_pass[1:], "memory_mb": memory.growth_mb}


def benchmark(args) -> None:
    from depo_trl.toy.world import ToyWorldConfig, build_toy_tokenizer, generate_rows

    tokenizer = build_toy_tokenizer()
    rows = generate_rows(
        64, seed=0, config=ToyWorldConfig(short_distractors=3, long_distractors=args.long_distractors)
    )
    lengths = {
        key: statistics.fmean(
            len(
                tokenizer(tokenizer.apply_chat_template(r[key], tokenize=False, add_generation_prompt=True))[
                    "input_ids"
                ]
            )
            for r in rows
        )
        for key in ("prompt", "long_prompt")
    }
    print(
        f"prompt tokens: short {lengths['prompt']:.0f}, long {lengths['long_prompt']:.0f} "
        f"({lengths['long_prompt'] / lengths['prompt']:.1f}x); {args.prompts} prompts x {args.generations} rollouts "
        f"per step, {args.completion_tokens} completion tokens; {args.rounds} rounds of every arm, each a warm-up "
        f"step and {args.steps} measured"
    )
    arms = {
        "long": ARMS["long"].settings,
        "short": ARMS["short"].settings,
        "depo-naive": {**ARMS["depo"].settings, "share_long_prefix": False},
        "depo-shared": {**ARMS["depo"].settings, "share_long_prefix": True},
        "depo-iw-shared": {**ARMS["depo-iw"].settings, "share_long_prefix": True},
    }
    measured = {name: {"step": [], "long_pass_forward": [], "memory_mb": 0.0} for name in arms}
    for round_index in range(args.rounds):
        for name, settings in arms.items():
            result = measure_arm(name, settings, rows, tokenizer, args)
            measured[name]["step"] += result["step"]
            measured[name]["long_pass_forward"] += result["long_pass_forward"]
            measured[name]["memory_mb"] = max(measured[name]["memory_mb"], result["memory_mb"])
        print(f"round {round_index + 1} of {args.rounds} done", flush=True)
    results = {
        name: {
            "step": min(values["step"]),
            "long_pass_forward": min(values["long_pass_forward"], default=0.0),
            "memory_mb": values["memory_mb"],
        }
        for name, values in measured.items()
    }
    for name, result in results.items():
        print(
            f"{name:15s} step {result['step']:.3f} s   long-pass forward {result['long_pass_forward']:.3f} s   "
            f"peak memory growth {result['memory_mb']:.0f} MB"
        )

    reference = results["long"]["step"]
    print("\nratios to long (step time): " + ", ".join(f"{k} {v['step'] / reference:.2f}" for k, v in results.items()))
    # The long pass's full cost (forward + its share of the backward) is what a DePO step adds to an RL-on-short step
    short_step = results["short"]["step"]
    shared_pass, naive_pass = results["depo-shared"]["step"] - short_step, results["depo-naive"]["step"] - short_step
    forward_ratio = results["depo-shared"]["long_pass_forward"] / results["depo-naive"]["long_pass_forward"]
    print(
        f"long pass (DePO step - RL-on-short step): naive {naive_pass:.3f} s, shared {shared_pass:.3f} s; "
        f"forward only: ratio {forward_ratio:.3f}"
    )
    depo_step_ratio = results["depo-shared"]["step"] / reference
    print(f"depo_step_ratio={depo_step_ratio:.3f} long_pass_ratio={shared_pass / naive_pass:.3f}")


@reports_usage_errors("python benchmarks/step_cost.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python benchmarks/step_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=2, help="Measured steps per arm and round.")
    parser.add_argument("--rounds", type=positive_int, default=4, help="Turns every arm takes, interleaved.")
    parser.add_argument("--prompts", type=positive_int, default=4)
    parser.add_argument("--generations", type=positive_int, default=8)
    parser.add_argument("--completion-tokens", type=positive_int, default=24)
    parser.add_argument(
        "--long-distractors",
        type=positive_int,
        default=63,
        help="About 8x the short prompt (63: every person of the pools).",
    )
    parser.add_argument(
        "--forward-tokens",
        type=positive_int,
        default=None,
        help="distillation_forward_tokens (default: the library's, the memory model's forward size).",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden", type=positive_int, default=128)
    parser.add_argument("--layers", type=positive_int, default=4)
    parser.add_argument("--run-dir", default="runs/step_cost")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; run without --device (the CPU).")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    benchmark(args)


if __name__ == "__main__":
    main()
