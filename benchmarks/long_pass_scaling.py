"""How the long-context pass's time and memory grow with the context and the rollout count, and a 7B prediction.

    python benchmarks/long_pass_scaling.py                 # CPU: ~15 minutes on 2 cores
    python benchmarks/long_pass_scaling.py --device cuda   # GPU: a wider model and longer contexts
    python benchmarks/long_pass_scaling.py --quick         # a small sweep that checks the script runs

The long pass alone (forward + backward of the completion log-probs under one long prompt, with gradient
checkpointing as the recipes use it) on a randomly initialised Qwen2 (CPU: hidden 512, 4 layers, GQA 8/2 heads):

- naive: every rollout a `[prompt, completion]` sequence, all in one forward (the pass without sharing);
- shared: what DePOTrainer runs by default: one packed row per prompt through the model's own SDPA or
  flash-attention (`depo_trl.long_context`), in chunks of at most `distillation_chunk_tokens` tokens (the default:
  the prompt and 8 completions), each recomputed in the backward when there are several.

Sweeps: long contexts of 1K, 2K, 4K, 8K tokens at 8 rollouts, and 1, 2, 4, 8, 16 rollouts at 4K; each point runs in
its own process, so its peak memory (resident set on a CPU, allocator peak on a GPU) is its own. Prints a table,
writes it with a plot to `--run-dir`, fits how the shared pass's time and memory grow (log-log slopes), and predicts
the long pass of Qwen2.5-7B at 15K + 8 x 1K tokens per prompt on one 80 GB GPU from the model shapes and the
measured memory per token. The last line is
`memory_exponent_L=<a> memory_exponent_rollouts=<b> shared_time_ratio_8x4k=<c>`.
"""

import json
import math
import multiprocessing
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

import psutil
import torch

from depo_trl.user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, writable_folder


@dataclass(frozen=True)
class Point:
    method: str  # "naive" or "shared"
    prompt_tokens: int
    rollouts: int


@dataclass
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


CPU_SHAPE = ModelShape(hidden=512, layers=4, heads=8, kv_heads=2, intermediate=2048, vocab=4096)
GPU_SHAPE = ModelShape(hidden=2048, layers=8, heads=16, kv_heads=4, intermediate=8192, vocab=32000)
QWEN_7B = ModelShape(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064)
QWEN_7B_PARAMETERS = 7.62e9


def build_model(shape: ModelShape, device: str, max_positions: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    implementation = "sdpa"
    if device == "cuda":
        from transformers.utils import is_flash_attn_2_available

        implementation = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    model.config._attn_implementation = implementation
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    add_fused_lm_head(model, temperature=1.0)
    return model


def long_pass(model, point: Point, completion_tokens: int, chunk_tokens: int, device: str) -> None:
    """Forward and backward of the completion log-probs of `point.rollouts` completions under one long prompt."""
    from torch.utils.checkpoint import checkpoint

    from depo_trl.long_context import pack_shared_row, plan_long_pass, shared_row_log_probs

    generator = torch.Generator().manual_seed(point.prompt_tokens * 1000 + point.rollouts)
    vocab = model.config.vocab_size
    prompt = torch.randint(100, vocab, (point.prompt_tokens,), generator=generator)
    completions = [torch.randint(100, vocab, (completion_tokens,), generator=generator) for _ in range(point.rollouts)]
    if point.method == "naive":
        input_ids = torch.stack([torch.cat([prompt, completion]) for completion in completions]).to(device)
        labels = input_ids.clone()
        labels[:, : point.prompt_tokens] = -100
        log_probs = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
        log_probs.float().sum().backward()
        return
    chunks = plan_long_pass(
        [0] * point.rollouts, [point.prompt_tokens] * point.rollouts, [completion_tokens] * point.rollouts,
        chunk_tokens, share_prefix=True,
    )  # fmt: skip

    def chunk_loss(groups, *_):
        packed = pack_shared_row([(prompt, [(r, completions[r]) for r in group]) for group in groups], device)
        return shared_row_log_probs(model, packed).float().sum()

    dummy = torch.ones((), device=device, requires_grad=True)
    losses = [
        checkpoint(chunk_loss, groups, dummy, use_reentrant=False) if len(chunks) > 1 else chunk_loss(groups)
        for groups in chunks
    ]
    torch.stack(losses).sum().backward()


def measure_point(point: Point, shape: ModelShape, completion_tokens: int, chunk_tokens: int, device: str, queue):
    """Child process: build the model, warm up on a short input, then time one pass and record its peak memory."""
    from depo_trl.long_context import install_shared_prefix_attention

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = build_model(shape, device, max_positions=point.prompt_tokens + 17 * (completion_tokens + 1) + 64)
    install_shared_prefix_attention(model.config._attn_implementation)
    long_pass(model, Point(point.method, 64, 2), 8, chunk_tokens, device)  # kernels and allocator warm-up
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    long_pass(model, point, completion_tokens, chunk_tokens, device)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put({"seconds": time.perf_counter() - started, "peak_mib": max(peak - baseline, 0) / 2**20})


def run_point(point: Point, shape: ModelShape, completion_tokens: int, chunk_tokens: int, device: str) -> dict:
    # glibc returns large freed blocks to the system at once, so the resident set follows what is allocated
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=measure_point, args=(point, shape, completion_tokens, chunk_tokens, device, queue), daemon=True
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"measuring {point} failed (exit code {child.exitcode})")
    return {**asdict(point), **queue.get()}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent of y ~ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mean_x, mean_y = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mean_x) * (b - mean_y) for a, b in zip(lx, ly)) / sum((a - mean_x) ** 2 for a in lx)


def predict_7b(results: list[dict], shape: ModelShape, completion_tokens: int, dtype_bytes: int) -> dict:
    """Qwen2.5-7B's long pass at 15K + 8 x 1K tokens per prompt, scaled from the measured shared pass.

    Memory per token of a packed row has two parts. With gradient checkpointing, each layer's input is kept for the
    backward: `layers x hidden x bytes`, exact from the shapes. The rest is the working set of the one layer being
    recomputed (its projections, attention, MLP, and their gradients): the measured slope (bytes per row token over
    the context sweep at 8 rollouts) minus the first part, scaled from this model's width (hidden + MLP) and dtype to
    Qwen2.5-7B's in bf16. Time: FLOPs (forward, recomputation, backward: 8 x parameters x tokens, plus causal
    attention) at an assumed 40% of an A100's 312 bf16 TFLOP/s.
    """
    shared = sorted(
        (r for r in results if r["method"] == "shared" and r["rollouts"] == 8), key=lambda r: r["prompt_tokens"]
    )
    row_tokens = [r["prompt_tokens"] + 8 * (completion_tokens + 1) for r in shared]
    memory = [r["peak_mib"] * 2**20 for r in shared]
    bytes_per_token = (memory[-1] - memory[0]) / (row_tokens[-1] - row_tokens[0])
    kept = shape.layers * shape.hidden * dtype_bytes
    working = max(bytes_per_token - kept, 0.0)
    width_scale = (QWEN_7B.hidden + QWEN_7B.intermediate) / (shape.hidden + shape.intermediate) * 2 / dtype_bytes
    prompt, rollouts, completion = 15360, 8, 1000
    row = prompt + rollouts * (completion + 1)
    kept_gib = row * QWEN_7B.layers * QWEN_7B.hidden * 2 / 2**30
    working_gib = row * working * width_scale / 2**30
    states_gib = QWEN_7B_PARAMETERS * (2 + 4 + 4 + 4) / 8 / 2**30  # bf16 weights, fp32 master + Adam, ZeRO-3 over 8
    vllm_gib = 0.3 * 80  # the recipes' vllm_gpu_memory_utilization, colocated
    head_dim = QWEN_7B.hidden // QWEN_7B.heads
    attention_flops = (
        4 * QWEN_7B.layers * QWEN_7B.heads * head_dim * (prompt**2 / 2 + rollouts * (completion + 1) * prompt)
    )
    flops = 8 * QWEN_7B_PARAMETERS * row + 4 * attention_flops  # forward, recompute, backward (2x)
    naive_attention = 4 * QWEN_7B.layers * QWEN_7B.heads * head_dim * rollouts * (prompt + completion) ** 2 / 2
    naive_flops = 8 * QWEN_7B_PARAMETERS * rollouts * (prompt + completion) + 4 * naive_attention
    throughput = 0.4 * 312e12
    return {
        "row_tokens": row,
        "measured_bytes_per_row_token": bytes_per_token,
        "checkpointed_layer_inputs_gib": kept_gib,
        "recomputed_layer_working_set_gib": working_gib,
        "long_pass_activations_gib": kept_gib + working_gib,
        "zero3_states_gib_per_gpu": states_gib,
        "vllm_colocated_gib": vllm_gib,
        "total_gib": kept_gib + working_gib + states_gib + vllm_gib,
        "shared_seconds_per_prompt": flops / throughput,
        "naive_seconds_per_prompt": naive_flops / throughput,
    }


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(9, 7))
    for column, (variable, fixed, label) in enumerate(
        [
            ("prompt_tokens", ("rollouts", 8), "long context (tokens), 8 rollouts"),
            ("rollouts", ("prompt_tokens", 4096), "rollouts, 4K context"),
        ]
    ):
        for method in ("naive", "shared"):
            points = sorted(
                (r for r in results if r["method"] == method and r[fixed[0]] == fixed[1]), key=lambda r: r[variable]
            )
            xs = [r[variable] for r in points]
            axes[0][column].loglog(xs, [r["seconds"] for r in points], "o-", label=method)
            axes[1][column].loglog(xs, [r["peak_mib"] for r in points], "o-", label=method)
        axes[0][column].set_ylabel("seconds (forward + backward)")
        axes[1][column].set_ylabel("peak memory growth (MiB)")
        axes[1][column].set_xlabel(label)
        axes[0][column].legend()
    figure.suptitle("The long-context pass: naive vs shared prefix")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@reports_usage_errors("python benchmarks/long_pass_scaling.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python benchmarks/long_pass_scaling.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--completion-tokens", type=positive_int, default=None, help="CPU: 128, GPU: 1000.")
    parser.add_argument("--quick", action="store_true", help="A small sweep (contexts 256-512, 1-4 rollouts).")
    parser.add_argument("--run-dir", default="runs/long_pass_scaling")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; run the CPU variant (the default).")
    writable_folder("--run-dir", args.run_dir)
    os.makedirs(args.run_dir, exist_ok=True)
    shape = GPU_SHAPE if args.device == "cuda" else CPU_SHAPE
    completion = args.completion_tokens or (1000 if args.device == "cuda" else 128)
    if args.quick:
        contexts, rollout_counts, reference = [256, 512], [1, 2, 4], 512
    elif args.device == "cuda":
        contexts, rollout_counts, reference = [2048, 4096, 8192, 16384], [1, 2, 4, 8, 16], 4096
    else:
        contexts, rollout_counts, reference = [1024, 2048, 4096, 8192], [1, 2, 4, 8, 16], 4096
    fixed_rollouts = 8 if not args.quick else 2
    points = [Point(m, length, fixed_rollouts) for length in contexts for m in ("naive", "shared")]
    points += [Point(m, reference, r) for r in rollout_counts for m in ("naive", "shared") if r != fixed_rollouts]
    print(
        f"{args.device}: Qwen2 hidden {shape.hidden}, {shape.layers} layers, {shape.heads}/{shape.kv_heads} heads, "
        f"{completion}-token completions, gradient checkpointing; shared chunks of the context + 8 completions",
        flush=True,
    )
    results = []
    for point in points:
        chunk_tokens = point.prompt_tokens + 8 * (completion + 1)  # DePOConfig's default for this context
        results.append(run_point(point, shape, completion, chunk_tokens, args.device))
        print(
            f"{point.method:6s} context {point.prompt_tokens:6d}  rollouts {point.rollouts:2d}  "
            f"{results[-1]['seconds']:8.2f} s  peak {results[-1]['peak_mib']:8.0f} MiB",
            flush=True,
        )

    def series(method, variable, fixed_name, fixed_value):
        chosen = sorted(
            (r for r in results if r["method"] == method and r[fixed_name] == fixed_value), key=lambda r: r[variable]
        )
        return [r[variable] for r in chosen], chosen

    xs, shared_by_length = series("shared", "prompt_tokens", "rollouts", fixed_rollouts)
    memory_exponent_length = slope(xs, [r["peak_mib"] for r in shared_by_length])
    time_exponent_length = slope(xs, [r["seconds"] for r in shared_by_length])
    xs, shared_by_rollouts = series("shared", "rollouts", "prompt_tokens", reference)
    memory_exponent_rollouts = slope(xs, [r["peak_mib"] for r in shared_by_rollouts])
    time_exponent_rollouts = slope(xs, [r["seconds"] for r in shared_by_rollouts])
    _, naive_by_length = series("naive", "prompt_tokens", "rollouts", fixed_rollouts)
    reference_pair = {
        r["method"]: r for r in results if r["prompt_tokens"] == reference and r["rollouts"] == fixed_rollouts
    }
    time_ratio = reference_pair["shared"]["seconds"] / reference_pair["naive"]["seconds"]

    lines = ["| method | context | rollouts | seconds | peak MiB |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['method']} | {r['prompt_tokens']} | {r['rollouts']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} |"
        for r in sorted(
            results, key=lambda r: (r["rollouts"] != fixed_rollouts, r["prompt_tokens"], r["rollouts"], r["method"])
        )
    ]
    fits = (
        f"shared pass: memory ~ L^{memory_exponent_length:.2f}, time ~ L^{time_exponent_length:.2f} "
        f"({fixed_rollouts} rollouts); memory ~ R^{memory_exponent_rollouts:.2f}, time ~ R^{time_exponent_rollouts:.2f} "
        f"({reference} tokens); naive memory ~ L^{slope([r['prompt_tokens'] for r in naive_by_length], [r['peak_mib'] for r in naive_by_length]):.2f}"
    )
    report = {"device": args.device, "shape": asdict(shape), "completion_tokens": completion, "results": results}
    text = "\n".join(lines) + "\n\n" + fits + "\n"
    if not args.quick:
        prediction = predict_7b(results, shape, completion, 2 if args.device == "cuda" else 4)
        report["qwen2.5_7b_prediction"] = prediction
        text += (
            f"\nQwen2.5-7B, 15K-token prompt + 8 x 1K completions per prompt (one packed row of "
            f"{prediction['row_tokens']} tokens, within the recipes' distillation_chunk_tokens 24576; gradient "
            f"checkpointing, ZeRO-3 over 8 GPUs, vLLM colocated at 0.3): long-pass activations "
            f"{prediction['long_pass_activations_gib']:.1f} GiB (checkpointed layer inputs "
            f"{prediction['checkpointed_layer_inputs_gib']:.1f} + one recomputed layer "
            f"{prediction['recomputed_layer_working_set_gib']:.1f}) + model/optimizer states "
            f"{prediction['zero3_states_gib_per_gpu']:.1f} GiB + vLLM {prediction['vllm_colocated_gib']:.0f} GiB = "
            f"{prediction['total_gib']:.1f} GiB of 80; about {prediction['shared_seconds_per_prompt']:.1f} s per "
            f"prompt (naive: {prediction['naive_seconds_per_prompt']:.1f} s) at 40% of an A100's bf16 peak.\n"
        )
    print("\n" + text)
    with open(os.path.join(args.run_dir, "long_pass_scaling.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.run_dir, "long_pass_scaling.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    plot(results, os.path.join(args.run_dir, "long_pass_scaling.png"))
    print(
        f"memory_exponent_L={memory_exponent_length:.3f} memory_exponent_rollouts={memory_exponent_rollouts:.3f} "
        f"shared_time_ratio_8x4k={time_ratio:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
