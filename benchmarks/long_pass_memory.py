"""The long pass's memory model against what a window really takes, per process: the planned peak
(`WindowPlan.predicted_peak_bytes`) beside the measured growth of the peak during one window's forwards and backward.

    python benchmarks/long_pass_memory.py --output-dir runs/long_pass_memory [--lora] [--without-layer-checkpoints]
    accelerate launch --multi_gpu --num_processes 2 benchmarks/long_pass_memory.py --uneven --output-dir ...

A random Qwen2 of 4 layers (`--hidden`, `--vocab`; float32 on a CPU, bfloat16 on a GPU, SDPA) with the recipes'
gradient checkpointing runs the pass of `--prompts` prompts of `--prompt-tokens` tokens with `--rollouts` completions
each, one prompt per forward, held for the backward (under the layers' checkpoints, or without them; `--recomputed`:
all but the last recomputed in it). `--lora` wraps the model in a PEFT LoRA adapter on every linear layer (rank 16,
dropout 0.05). `--uneven`: the last process has one prompt, so it runs padding forwards. `--sequence-parallel N`:
groups of N processes split each forward (the group runs the union of its windows).
Peaks: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the resident set's high-water mark (`VmHWM`, reset through
`/proc/self/clear_refs` before the pass), with glibc returning freed blocks of 64 KiB and more at once. Parameter
gradients exist before the pass (a warm-up step keeps them), as in every step but the first. Each process writes
`rank<r>.json` and prints `rank=<r> predicted_mib=<p> measured_mib=<m> ratio=<m/p> seconds=<s>`.
"""

import json
import os
import re
import sys
import time

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from depo_trl.user_errors import ArgumentParser, positive_int, reports_usage_errors, writable_folder  # noqa: E402


def build_model(lora: bool, max_positions: int, device: str, hidden: int, vocab: int) -> torch.nn.Module:
    """A random Qwen2 of 4 layers, under layer checkpointing, with TRL's fused LM head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=max_positions, attn_implementation="sdpa",
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    model.gradient_checkpointing_enable({"use_reentrant": False})  # as Trainer.train() does for the recipes
    model.train()
    add_fused_lm_head(model.get_base_model() if lora else model, temperature=1.0)  # where GRPOTrainer adds it
    return model


def window_rollouts(
    prompts: int, prompt_tokens: int, rollouts: int, completion_tokens: int, device: str, seed: int, vocab: int
):
    """`prompts` random prompts with `rollouts` random completions each."""
    from depo_trl.distillation import Rollouts

    generator = torch.Generator().manual_seed(seed)
    long_prompt_ids, completions = [], []
    for _ in range(prompts):
        prompt = torch.randint(10, vocab, (prompt_tokens,), generator=generator).to(device)
        long_prompt_ids += [prompt] * rollouts
        completions += [torch.randint(10, vocab, (completion_tokens,), generator=generator) for _ in range(rollouts)]
    completion_ids = torch.stack(completions).to(device)
    mask = torch.ones_like(completion_ids)
    return Rollouts(long_prompt_ids, completion_ids, mask, mask)


def peak_tracker(device: str):
    """`(reset, peak)`: reset the high-water mark and return the current usage; the high-water mark since."""
    if device == "cuda":

        def reset() -> int:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()

        def peak() -> int:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()

        return reset, peak

    def status(field: str) -> int:
        with open("/proc/self/status") as handle:
            return int(re.search(rf"{field}:\s+(\d+) kB", handle.read())[1]) * 1024

    def reset() -> int:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # the high-water mark of the resident set back to the current size
        return status("VmRSS")

    return reset, lambda: status("VmHWM")


@reports_usage_errors("python benchmarks/long_pass_memory.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python benchmarks/long_pass_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/long_pass_memory")
    parser.add_argument("--prompts", type=positive_int, default=2, help="Prompts in each process's window.")
    parser.add_argument("--prompt-tokens", type=positive_int, default=1024)
    parser.add_argument("--rollouts", type=positive_int, default=4, help="Completions per prompt.")
    parser.add_argument("--completion-tokens", type=positive_int, default=64)
    parser.add_argument("--hidden", type=positive_int, default=256, help="The model's width (4 layers, 8 heads).")
    parser.add_argument("--vocab", type=positive_int, default=2048, help="The model's vocabulary.")
    parser.add_argument("--lora", action="store_true", help="A LoRA adapter (rank 16, dropout 0.05) on every linear.")
    parser.add_argument("--without-layer-checkpoints", action="store_true", help="Hold every layer's activations.")
    parser.add_argument(
        "--recomputed", action="store_true", help="Recompute every forward but the last in the backward."
    )
    parser.add_argument("--uneven", action="store_true", help="The last process has one prompt.")
    parser.add_argument(
        "--sequence-parallel", type=positive_int, default=1, help="Ranks splitting each forward (a group of them)."
    )
    args = parser.parse_args(argv)
    writable_folder("--output-dir", args.output_dir)
    # glibc maps blocks of 64 KiB and more on their own and returns them at once when freed, so the resident set
    # follows what is allocated (with its default, freed blocks under 1 MiB, a shard's activations, stay resident)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ.update(MALLOC_MMAP_THRESHOLD_=str(1 << 16), MALLOC_TRIM_THRESHOLD_="0")
        os.execv(sys.executable, [sys.executable, *sys.argv])

    from accelerate import Accelerator

    from depo_trl.distillation import LongPass, PassPlan
    from depo_trl.distillation.long_pass import install_shared_prefix_attention
    from depo_trl.distillation.long_pass.sequence_parallel import SequenceParallelGroup

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device.type
    rank, last = accelerator.process_index, accelerator.num_processes - 1
    row_tokens = args.prompt_tokens + args.rollouts * (args.completion_tokens + 1)
    model = build_model(args.lora, row_tokens + 64, device, args.hidden, args.vocab)
    install_shared_prefix_attention("sdpa")
    group = None
    if args.sequence_parallel > 1:
        group = SequenceParallelGroup.create(args.sequence_parallel, rank, accelerator.num_processes)
    long_pass = LongPass(
        accelerator, naive_log_probs=None, pad_token_id=0, share_prefix=True, requested_tokens=row_tokens,
        memory_fraction=0.8, rollouts_per_prompt=args.rollouts, sequence_parallel=group,
    )  # fmt: skip
    prompts = 1 if args.uneven and rank == last else args.prompts
    rollouts = window_rollouts(
        prompts, args.prompt_tokens, args.rollouts, args.completion_tokens, device, seed=rank, vocab=args.vocab
    )
    rows = torch.arange(prompts * args.rollouts, device=accelerator.device)
    warm_up = window_rollouts(1, 16, 2, 4, device, seed=rank, vocab=args.vocab)
    how = PassPlan.WITHOUT_LAYER_CHECKPOINTS if args.without_layer_checkpoints else PassPlan.HELD
    how = PassPlan.RECOMPUTED if args.recomputed else how

    def one_window(window, window_rows) -> tuple[int, int, float | None, float]:
        from unittest import mock

        from depo_trl.distillation.long_pass import runner

        with mock.patch.object(runner, "plan_pass", lambda *sizes: how):
            planned = (window, window_rows) if group is None else group.union(window, window_rows)[:2]
            plan = long_pass.plan(model, *planned)  # what run plans: the group's union under sequence parallelism
            reset, peak = peak_tracker(device)
            baseline = reset()
            started = time.perf_counter()
            loss, _ = long_pass.run(model, window, window_rows, lambda _, logps: logps.sum())
            loss.backward()
            seconds = time.perf_counter() - started
        return baseline, peak(), plan.predicted_peak_bytes(), seconds

    one_window(warm_up, torch.arange(2, device=accelerator.device))  # kernels, allocator, parameter gradients
    baseline, peak, predicted, seconds = one_window(rollouts, rows)
    measured = peak - baseline
    result = {
        "rank": rank, "processes": accelerator.num_processes, "sequence_parallel": args.sequence_parallel,
        "prompts": prompts, "lora": args.lora, "how": how.value, "predicted_mib": predicted / 2**20,
        "measured_mib": measured / 2**20, "ratio": measured / predicted, "seconds": seconds,
    }  # fmt: skip
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    print(
        f"rank={rank} predicted_mib={result['predicted_mib']:.1f} measured_mib={result['measured_mib']:.1f} "
        f"ratio={result['ratio']:.3f} seconds={seconds:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
