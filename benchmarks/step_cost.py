"""Step cost of DePO against long-context RL, and of the shared-prefix long pass against the naive one.

    python benchmarks/step_cost.py                       # CPU, tiny model, long prompts ~10x the short ones
    python benchmarks/step_cost.py --device cuda         # GPU: hidden 2048, 16K-token long prompt, 8 rollouts

CPU (default): one process trains each arm for a few steps from the same random tiny Qwen2 on toy-world rows whose
long prompts are about 10x the short ones, with a reward that marks half of each prompt's rollouts correct (4 of 8
distilled). It prints per-step wall time (median), the long pass's time, and peak resident memory growth per arm, and
ratios to RL-on-long. The last line is
`depo_step_ratio=<DePO shared-prefix step / RL-on-long step> long_pass_ratio=<shared-prefix long pass / naive>`.

GPU (`--device cuda`): the long pass alone on a randomly initialised model of realistic width, one long prompt with
`--rollouts` completions: naive (one sequence per rollout), chunked (`--chunk` rollouts per chunk, recomputed in the
backward) and shared prefix; time and peak CUDA memory of forward + backward.
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


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 5 ms, minus where it started."""

    def __enter__(self):
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
        self.running = False
        self.thread.join()
        self.growth_mb = (self.peak - self.start) / 2**20


def measure_arm(name: str, settings: dict, rows: list, tokenizer, args) -> dict[str, float]:
    """Train one arm for 1 + `args.steps` steps; median step time, long-pass forward time, peak RSS growth."""
    from depo_trl import DePOConfig, DePOTrainer
    from depo_trl.model_utils import build_tiny_qwen2

    torch.manual_seed(0)
    model = build_tiny_qwen2(
        tokenizer,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
    )
    config = DePOConfig(
        output_dir=os.path.join(args.run_dir, name),
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.completion_tokens,
        generation_kwargs={"min_new_tokens": args.completion_tokens},
        max_steps=args.steps + 1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        **settings,
    )
    long_pass_seconds = []
    timer = StepTimer()
    trainer = DePOTrainer(
        model=model,
        reward_funcs=alternate_correct,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    window_long_pass = trainer._window_long_pass

    def timed_long_pass(*pass_args, **pass_kwargs):
        started = time.perf_counter()
        loss = window_long_pass(*pass_args, **pass_kwargs)
        long_pass_seconds.append(time.perf_counter() - started)
        return loss

    trainer._window_long_pass = timed_long_pass
    with PeakRSS() as memory:
        trainer.train()
    # The long pass's backward runs inside the step's backward: the time measured here is its forward only.
    return {
        "step": statistics.median(timer.step_seconds[1:]),
        "long_pass_forward": statistics.median(long_pass_seconds[1:]) if long_pass_seconds else 0.0,
        "memory_mb": memory.growth_mb,
    }


def cpu_benchmark(args) -> None:
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
        f"per step, {args.completion_tokens} completion tokens, {args.steps} measured steps after 1 warm-up step"
    )
    arms = {
        "long": ARMS["long"].settings,
        "short": ARMS["short"].settings,
        "depo-naive": {**ARMS["depo"].settings, "share_long_prefix": False},
        "depo-shared": {**ARMS["depo"].settings, "share_long_prefix": True},
        "depo-iw-shared": {**ARMS["depo-iw"].settings, "share_long_prefix": True},
    }
    results = {}
    for name, settings in arms.items():
        results[name] = measure_arm(name, settings, rows, tokenizer, args)
        print(
            f"{name:15s} step {results[name]['step']:.3f} s   long-pass forward "
            f"{results[name]['long_pass_forward']:.3f} s   peak RSS growth {results[name]['memory_mb']:.0f} MB",
            flush=True,
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


def gpu_benchmark(args) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from depo_trl.long_context import pack_rows

    device = torch.device("cuda")
    config = Qwen2Config(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=args.long_tokens + 4096,
    )
    model = Qwen2ForCausalLM(config).to(device, torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    model.gradient_checkpointing_enable()
    model.train()
    add_fused_lm_head(model, temperature=0.7)
    prompt = torch.randint(100, 32000, (args.long_tokens,), device=device)
    completions = [torch.randint(100, 32000, (args.completion_tokens,), device=device) for _ in range(args.rollouts)]
    print(
        f"long prompt {args.long_tokens} tokens, {args.rollouts} rollouts x {args.completion_tokens} tokens, "
        f"hidden {args.hidden}, {args.layers} layers, bf16, gradient checkpointing"
    )

    def naive_rows(rollouts):
        input_ids = torch.stack([torch.cat([prompt, completions[r]]) for r in rollouts])
        labels = input_ids.clone()
        labels[:, : args.long_tokens] = -100
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    def run(name, batches, recompute):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            total = 0
            for inputs in batches:

                def loss_of(*_, inputs=inputs):
                    return -model(**inputs, fused_lm_head=True).log_probs.float().sum()

                dummy = torch.ones((), device=device, requires_grad=True)
                loss = (
                    torch.utils.checkpoint.checkpoint(loss_of, dummy, use_reentrant=False) if recompute else loss_of()
                )
                total = total + loss
            total.backward()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / args.repeats
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"{name:22s} {seconds:.3f} s/step  peak {peak:.2f} GiB", flush=True)
        return seconds

    everyone = list(range(args.rollouts))
    naive = run("naive (one batch)", [naive_rows(everyone)], recompute=False)
    chunks = [everyone[i : i + args.chunk] for i in range(0, args.rollouts, args.chunk)]
    run(f"chunked ({args.chunk}/chunk)", [naive_rows(c) for c in chunks], recompute=True)
    packed = pack_rows([(prompt.cpu(), [(r, completions[r].cpu()) for r in everyone])], 0, mask_dtype=torch.bool)
    shared_inputs = {
        "input_ids": packed.input_ids.to(device),
        "attention_mask": packed.attention_mask.to(device),
        "position_ids": packed.position_ids.to(device),
        "labels": packed.labels.to(device),
    }
    shared = run("shared prefix", [shared_inputs], recompute=False)
    print(f"long_pass_ratio={shared / naive:.3f}")


@reports_usage_errors("python benchmarks/step_cost.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python benchmarks/step_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=positive_int, default=4)
    parser.add_argument("--prompts", type=positive_int, default=4)
    parser.add_argument("--generations", type=positive_int, default=8)
    parser.add_argument("--completion-tokens", type=positive_int, default=24)
    parser.add_argument("--long-distractors", type=positive_int, default=56, help="CPU: about 10x the short prompt.")
    parser.add_argument("--hidden", type=positive_int, default=None)
    parser.add_argument("--layers", type=positive_int, default=None)
    parser.add_argument("--long-tokens", type=positive_int, default=16384, help="GPU: long prompt length.")
    parser.add_argument("--rollouts", type=positive_int, default=8, help="GPU: distilled rollouts of the prompt.")
    parser.add_argument("--chunk", type=positive_int, default=2, help="GPU: rollouts per chunk for the chunked pass.")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--run-dir", default="runs/step_cost")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; run the CPU variant (the default).")
    if args.device == "cuda":
        args.hidden, args.layers = args.hidden or 2048, args.layers or 4
        args.completion_tokens = max(args.completion_tokens, 512)
        gpu_benchmark(args)
    else:
        args.hidden, args.layers = args.hidden or 128, args.layers or 4
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
