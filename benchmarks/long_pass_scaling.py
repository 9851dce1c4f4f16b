"""How the long-context pass's time and memory grow with the context and the rollout count, and a 7B prediction.

    python benchmarks/long_pass_scaling.py                 # CPU: ~15 minutes on 2 cores
    python benchmarks/long_pass_scaling.py --device cuda   # GPU: a wider model and longer contexts
    python benchmarks/long_pass_scaling.py --quick         # a small sweep that checks the script runs

The long pass alone (forward + backward of the completion log-probs under one long prompt, with gradient
checkpointing as the recipes use it) on a randomly initialised Qwen2 (CPU: hidden 512, 4 layers, GQA 8/2 heads):

- naive: every rollout a `[prompt, completion]` sequence, all in one forward (the pass without sharing);
- shared: what DePOTrainer runs, through its own `depo_trl.distillation.LongPass`: one packed row per prompt through
  the model's own SDPA or flash-attention (`depo_trl.distillation.long_pass`), in forwards the memory model sizes
  (the whole prompt with its rollouts where it fits, as at every point here), held for the backward.

Sweeps: long contexts of 1K, 2K, 4K, 8K tokens at 8 rollouts, and 1, 2, 4, 8, 16 rollouts at 4K; each point runs in
its own process, so its peak memory (resident set on a CPU, allocator peak on a GPU) is its own. Prints a table,
writes it with a plot to `--run-dir`, fits how the shared pass's time and memory grow (log-log slopes), and predicts
the long pass of Qwen2.5-7B at 15K + 8 x 1K tokens per prompt on one 80 GB GPU from the model shapes and the
measured memory per token. Beside each shared point, the memory model's prediction (`depo_trl.distillation.memory`)
for the same shapes; the long pass past one GPU with sequence parallelism (Qwen2.5-7B at 64K and 128K, a 32B model at
60K, `predict_long_contexts`); and, on a CPU, a sequence-parallel arm on two processes at the longest length
(`sequence_parallel_arm`). The last line is `memory_exponent_L=<a> memory_exponent_rollouts=<b>
shared_time_ratio_8x4k=<c> sp2_peak_ratio=<d> sp2_time_ratio=<e>`.
"""

import json
import math
import multiprocessing
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from unittest import mock

import psutil
import torch
from transformers.utils import is_flash_attn_2_available

from depo_trl.user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, writable_folder


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
QWEN_32B = ModelShape(hidden=5120, layers=64, heads=40, kv_heads=8, intermediate=27648, vocab=152064)
QWEN_32B_PARAMETERS = 32.8e9


def build_model(shape: ModelShape, device: str, max_positions: int):
    from transformers import Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    config = shape_config(shape, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    implementation = "sdpa"
    if device == "cuda":
        from transformers.utils import is_flash_attn_2_available

        implementation = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    model.config._attn_implementation = implementation
    model.activation_checkpointing_enable()  # as Trainer.train() does for the recipes' gradient_checkpointing
    model.train()
    add_fused_lm_head(model, temperature=1.0)
    return model


def shape_config(shape: ModelShape, **overrides):
    """A Qwen2 configuration of `shape` (the memory model reads it; `build_model` builds from it)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        **overrides,
    )


def long_pass(model, point: Point, completion_tokens: int, device: str) -> None:
    """Forward and backward of the completion log-probs of `point.rollouts` completions under one long prompt."""
    from accelerate import Accelerator

    from depo_trl.distillation import LongPass, Rollouts
    from depo_trl.distillation.long_pass import runner as long_pass_module

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
    accelerator = Accelerator(cpu=device == "cpu")
    completion_ids = torch.stack(completions).to(device)
    mask = torch.ones_like(completion_ids)
    rollouts = Rollouts([prompt.to(device)] * point.rollouts, completion_ids, mask, mask)
    runner = LongPass(
        accelerator,
        naive_log_probs=None,
        pad_token_id=0,
        share_prefix=True,
        requested_tokens=None,
        memory_fraction=0.8,
        rollouts_per_prompt=point.rollouts,
    )
    # The recipes' regime: at 7B a window's full activations never fit, so the pass keeps the model's layer
    # checkpoints (as the naive pass here does), where on this small model it would turn them off
    with mock.patch.object(long_pass_module, "plan_pass", plan_under_layer_checkpointing):
        loss, _ = runner.run(
            model, rollouts, torch.arange(point.rollouts, device=device), lambda _, logps: logps.sum()
        )
    loss.backward()


def plan_under_layer_checkpointing(plain, checkpointed, *sizes):
    """`plan_pass` for a model whose full activations never fit: held under its layer checkpoints, or recomputed."""
    from depo_trl.distillation import PassPlan, plan_pass

    plan = plan_pass(checkpointed, checkpointed, *sizes)
    return PassPlan.HELD if plan == PassPlan.WITHOUT_LAYER_CHECKPOINTS else plan


def measure_point(point: Point, shape: ModelShape, completion_tokens: int, device: str, queue):
    """Child process: build the model, warm up on a short input, then time one pass and record its peak memory."""
    from depo_trl.distillation.long_pass import install_shared_prefix_attention

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = build_model(shape, device, max_positions=point.prompt_tokens + 17 * (completion_tokens + 1) + 64)
    install_shared_prefix_attention(model.config._attn_implementation)
    long_pass(model, Point(point.method, 64, 2), 8, device)  # kernels and allocator warm-up
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    long_pass(model, point, completion_tokens, device)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put({"seconds": time.perf_counter() - started, "peak_mib": max(peak - baseline, 0) / 2**20})


def run_point(point: Point, shape: ModelShape, completion_tokens: int, device: str) -> dict:
    # glibc returns large freed blocks to the system at once, so the resident set follows what is allocated
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=measure_point, args=(point, shape, completion_tokens, device, queue), daemon=True)
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


def parameters(shape: ModelShape) -> int:
    """Parameters of a Qwen2 of `shape` (untied embeddings): attention with grouped keys, the gated MLP, the tables."""
    key_width = shape.hidden // shape.heads * shape.kv_heads
    layer = 2 * shape.hidden**2 + 2 * shape.hidden * key_width + 3 * shape.hidden * shape.intermediate
    return shape.layers * layer + 2 * shape.vocab * shape.hidden


def predicted_mib(shape: ModelShape, point: Point, completion_tokens: int, dtype_bytes: int, flash: bool) -> float:
    """The memory model's peak for one shared point (one held forward of the whole packed row, under gradient
    checkpointing), plus the parameters' gradients the backward allocates."""
    from depo_trl.distillation import LongPassMemory, PassPlan
    from depo_trl.distillation.long_pass import packed_row_tokens

    # The head's gradient is counted with every parameter's, so not as the model's fixed part
    memory = LongPassMemory.of_model(
        shape_config(shape), dtype_bytes, layer_checkpointing=True, rollouts_per_prompt=point.rollouts,
        keys_repeated_per_head=not flash, trainable_head=False,
    )  # fmt: skip
    row = packed_row_tokens(point.prompt_tokens, [completion_tokens] * point.rollouts)
    return (memory.peak_bytes(PassPlan.HELD, row, row) + parameters(shape) * dtype_bytes) / 2**20


def lora_per_layer(shape: ModelShape, rank: int) -> tuple[int, float]:
    """LoRA of `rank` on every linear layer of a decoder layer of `shape` (q, k, v, o, gate, up, down), with dropout:
    its parameters, and the bytes it saves per token for the backward in bf16 (`lora_saved_bytes`)."""
    from depo_trl.distillation.long_pass.memory import lora_saved_bytes

    key_width = shape.hidden // shape.heads * shape.kv_heads
    attention = [(shape.hidden, shape.hidden), (shape.hidden, key_width), (shape.hidden, key_width)]
    attention.append((shape.hidden, shape.hidden))
    mlp = [(shape.hidden, shape.intermediate), (shape.hidden, shape.intermediate), (shape.intermediate, shape.hidden)]
    linear_shapes = attention + mlp  # (in, out) of q, k, v, o and of gate, up, down
    adapter_parameters = sum(rank * (fan_in + fan_out) for fan_in, fan_out in linear_shapes)
    saved = sum(lora_saved_bytes(fan_in, rank, dropout=True, dtype_bytes=2) for fan_in, _ in linear_shapes)
    return adapter_parameters, saved


def predict_7b() -> list[dict]:
    """Qwen2.5-7B's long pass on one 80 GB GPU of the recipes (ZeRO-3 over 8 GPUs, gradient checkpointing,
    flash-attention, bf16; 15K-token prompts with 8 x 1K completions), as `LongPass` plans it: for a window of 4 or 8
    prompts per process (the GRPO/DAPO recipes' 64 rollouts; KD distils only the correct ones), with vLLM colocated at
    0.3 or on a server, with the recipes' `distillation_forward_tokens: 24576` or the memory model's forward size, at
    DePOConfig's default memory fraction; and the same with LoRA (rank 16 on every linear layer, dropout: the frozen
    model's bf16 weights sharded, the adapters' weights, gradients and Adam states, the frozen LM head gathered
    without a gradient, the adapters' saved activations) for a window of 8 prompts.

    Time: FLOPs at an assumed 40% of an A100's 312 bf16 TFLOP/s; per row token `2 x parameters` for each run of the
    backbone (once held without layer checkpoints, twice held under them, three times recomputed) and `4 x` for
    the backward (`2 x` with LoRA: the frozen weights take no gradient), plus causal attention over the prompt and
    each completion over the prompt.
    """
    from depo_trl.distillation import LongPassMemory, PassPlan, forward_size, plan_pass
    from depo_trl.distillation.long_pass import forward_tokens, plan_forwards

    prompt, rollouts, completion = 15360, 8, 1000
    row = prompt + rollouts * (completion + 1)
    head_dim = QWEN_7B.hidden // QWEN_7B.heads
    attention_flops = (
        4 * QWEN_7B.layers * QWEN_7B.heads * head_dim * (prompt**2 / 2 + rollouts * (completion + 1) * prompt)
    )
    throughput = 0.4 * 312e12
    adapter_parameters, adapter_bytes = lora_per_layer(QWEN_7B, rank=16)
    predictions = []
    for adapters in ("none", "LoRA r16"):
        lora = adapters != "none"
        plain, memory = (
            LongPassMemory.of_model(
                shape_config(QWEN_7B),
                2,
                layer_checkpointing=checkpointing,
                rollouts_per_prompt=8,
                keys_repeated_per_head=False,
                adapter_bytes=adapter_bytes if lora else 0.0,
                trainable_head=not lora,
                gathered_head=True,  # ZeRO-3
                kept_output_share=rollouts * completion / row,  # the head's copy of the scored positions (CUDA)
            )  # fmt: skip
            for checkpointing in (False, True)
        )
        # bf16 weights, and for what trains fp32 master weights and Adam's two moments, over 8 GPUs (ZeRO-3)
        if lora:
            states = QWEN_7B_PARAMETERS * 2 + adapter_parameters * QWEN_7B.layers * (2 + 4 + 4 + 4)
        else:
            states = QWEN_7B_PARAMETERS * (2 + 4 + 4 + 4)
        states_gib = states / 8 / 2**30
        for generation, vllm_gib in (("colocated", 0.3 * 80), ("server", 0.0)):
            available = (80 - states_gib - vllm_gib) * 0.8 * 2**30
            for prompts in (8,) if lora else (4, 8):
                keys = [p for p in range(prompts) for _ in range(rollouts)]
                prompt_lengths, completion_lengths = [prompt] * len(keys), [completion] * len(keys)
                for source in ("recipe", "memory model"):
                    size = (
                        24576
                        if source == "recipe"
                        else forward_size(memory, prompts * row, row, prompt + completion + 1, available)
                    )
                    forwards = plan_forwards(keys, prompt_lengths, completion_lengths, size, share_prefix=True)
                    held = sum(forward_tokens(f, prompt_lengths, completion_lengths, True) for f in forwards)
                    plan = plan_pass(plain, memory, held, size, len(forwards), available)
                    runs = {PassPlan.WITHOUT_LAYER_CHECKPOINTS: 1, PassPlan.HELD: 2, PassPlan.RECOMPUTED: 3}[plan]
                    backward = 2 if lora else 4
                    flops = (2 * runs + backward) * QWEN_7B_PARAMETERS * held + (runs + 2) * attention_flops * prompts
                    per_token = plain if plan == PassPlan.WITHOUT_LAYER_CHECKPOINTS else memory
                    long_pass_bytes = per_token.peak_bytes(plan, held, size)
                    predictions.append(
                        {
                            "adapters": adapters,
                            "generation": generation,
                            "prompts": prompts,
                            "forward_size": source,
                            "tokens_per_forward": size,
                            "forwards": len(forwards),
                            "plan": plan.value,
                            "long_pass_gib": long_pass_bytes / 2**30,
                            "states_gib": states_gib,
                            "vllm_gib": vllm_gib,
                            "seconds_per_prompt": flops / prompts / throughput,
                        }
                    )
    return predictions


def predict_long_contexts() -> list[dict]:
    """The long pass past one GPU's memory on 8 x 80 GB (ZeRO-3, gradient checkpointing, flash-attention, bf16, vLLM
    on a server): Qwen2.5-7B at 64K and 128K-token prompts (YaRN), Qwen2.5-32B at 60K, each process with one prompt and
    its 8 x 1K completions (and, for the 128K recipe, its window of 8 prompts), at every sequence-parallel size the
    model's heads allow. A group of `sp` processes runs its prompts' forwards, each split over it
    (`sequence_parallel.py`), planned as `LongPass` plans them; a recomputed forward keeps its backbone's output.
    Time: FLOPs per rank at an assumed 40% of an H100's 989 bf16 TFLOP/s (as `predict_7b`, the attention's heads split
    over the group). Exchange: per rank and step, the bytes Ulysses' all-to-alls send (queries, keys, values and the
    output of every layer, in each run of the backbone and once more for their gradients; `(sp - 1) / sp` of them leave
    the rank)."""
    from depo_trl.distillation import LongPassMemory, PassPlan, plan_pass
    from depo_trl.distillation.long_pass import packed_row_tokens
    from depo_trl.distillation.long_pass.sequence_parallel import allowed_sizes

    predictions = []
    for name, shape, parameters, prompt, prompts_per_process in (
        ("Qwen2.5-7B-Instruct", QWEN_7B, QWEN_7B_PARAMETERS, 65536, 1),
        ("Qwen2.5-7B-Instruct", QWEN_7B, QWEN_7B_PARAMETERS, 131072, 1),
        ("Qwen2.5-7B-Instruct", QWEN_7B, QWEN_7B_PARAMETERS, 130048, 8),
        ("Qwen2.5-32B-Instruct", QWEN_32B, QWEN_32B_PARAMETERS, 61440, 1),
    ):
        config = shape_config(shape)
        states_gib = parameters * (2 + 4 + 4 + 4) / 8 / 2**30
        available = (80 - states_gib) * 0.8 * 2**30
        row = packed_row_tokens(prompt, [1000] * 8)
        head_dim = shape.hidden // shape.heads
        attention_flops = 4 * shape.layers * shape.heads * head_dim * (prompt**2 / 2 + 8 * 1001 * prompt)
        for size in allowed_sizes(config, 8):
            plain, checkpointed = (
                LongPassMemory.of_model(
                    config,
                    2,
                    layer_checkpointing=checkpointing,
                    rollouts_per_prompt=8,
                    keys_repeated_per_head=False,
                    sequence_parallel=size,
                    gathered_head=True,
                    # The head's copy of the scored positions (CUDA), all on the last rank of the group
                    kept_output_share=min(8 * 1000 / -(-row // size), 1.0),
                )  # fmt: skip
                for checkpointing in (False, True)
            )
            local = -(-row // size)
            forwards = size * prompts_per_process  # the group's prompts, a shard of each on every rank
            held = forwards * local
            how = plan_pass(plain, checkpointed, held, local, forwards, available)
            used = plain if how == PassPlan.WITHOUT_LAYER_CHECKPOINTS else checkpointed
            long_pass_gib = used.peak_bytes(how, held, local) / 2**30
            runs = {PassPlan.WITHOUT_LAYER_CHECKPOINTS: 1, PassPlan.HELD: 2, PassPlan.RECOMPUTED: 3}[how]
            flops = (2 * runs + 4) * parameters * held + (runs + 2) * attention_flops * forwards / size
            key_width = max(shape.kv_heads, size) * head_dim
            # Each run of a layer exchanges its queries, keys, values and output; the backward their gradients once
            exchanged = (runs + 1) * (2 * shape.hidden + 2 * key_width) * 2 * shape.layers * held * (size - 1) / size
            predictions.append(
                {
                    "model": name,
                    "prompt_tokens": prompt,
                    "prompts_per_process": prompts_per_process,
                    "sequence_parallel": size,
                    "tokens_per_rank": local,
                    "plan": how.value,
                    "long_pass_gib": long_pass_gib,
                    "states_gib": states_gib,
                    "fits": long_pass_gib + states_gib <= 80 * 0.95,
                    "exchanged_gib": exchanged / 2**30,
                    "seconds_per_step": flops / (0.4 * 989e12),
                }  # fmt: skip
            )
    return predictions


def sequence_parallel_arm(prompt_tokens: int, completion: int, run_dir: str, quick: bool) -> dict:
    """Per-rank peak and seconds of the long pass at sp=2 and sp=1 on two CPU processes (each with one prompt and its
    8 completions, every forward but the last recomputed: the plan of a pass that does not fit), in one run:
    `benchmarks/long_pass_memory.py` launched twice. Its model has this benchmark's width with a small vocabulary, so
    its LM head is as small beside its layers as a 7B model's is at 128K tokens."""
    import subprocess

    arms = {}
    for size in (1, 2):
        output = os.path.join(run_dir, f"sequence_parallel_{size}")
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(29600 + size), os.path.join(ROOT, "benchmarks", "long_pass_memory.py"), "--output-dir", output,
            "--prompts", "1", "--prompt-tokens", str(prompt_tokens), "--rollouts", "8" if not quick else "2",
            "--completion-tokens", str(completion), "--recomputed", "--sequence-parallel", str(size),
            "--hidden", str(CPU_SHAPE.hidden), "--vocab", "512",
        ]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"the sequence-parallel arm failed at sp={size}: {result.stderr[-2000:]}")
        ranks = [json.load(open(os.path.join(output, f"rank{rank}.json"))) for rank in range(2)]
        arms[size] = {"peak_mib": max(r["measured_mib"] for r in ranks), "seconds": max(r["seconds"] for r in ranks)}
    return {
        "prompt_tokens": prompt_tokens,
        "rollouts": 2 if quick else 8,
        "arms": arms,
        "peak_ratio": arms[2]["peak_mib"] / arms[1]["peak_mib"],
        "time_ratio": arms[2]["seconds"] / arms[1]["seconds"],
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
        f"{completion}-token completions, gradient checkpointing; packed rows of the context + 8 completions",
        flush=True,
    )
    flash = args.device == "cuda" and is_flash_attn_2_available()
    dtype_bytes = 2 if args.device == "cuda" else 4
    results = []
    for point in points:
        results.append(run_point(point, shape, completion, args.device))
        if point.method == "shared":
            results[-1]["predicted_mib"] = predicted_mib(shape, point, completion, dtype_bytes, flash)
        predicted = f"  (memory model {results[-1]['predicted_mib']:6.0f})" if point.method == "shared" else ""
        print(
            f"{point.method:6s} context {point.prompt_tokens:6d}  rollouts {point.rollouts:2d}  "
            f"{results[-1]['seconds']:8.2f} s  peak {results[-1]['peak_mib']:8.0f} MiB{predicted}",
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

    lines = [
        "| method | context | rollouts | seconds | peak MiB | memory model MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['prompt_tokens']} | {r['rollouts']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | "
        f"{r['predicted_mib']:.0f} |"
        if "predicted_mib" in r
        else f"| {r['method']} | {r['prompt_tokens']} | {r['rollouts']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | |"
        for r in sorted(
            results, key=lambda r: (r["rollouts"] != fixed_rollouts, r["prompt_tokens"], r["rollouts"], r["method"])
        )
    ]
    naive_memory_exponent_length = slope(
        [r["prompt_tokens"] for r in naive_by_length], [r["peak_mib"] for r in naive_by_length]
    )
    fits = (
        f"shared pass: memory ~ L^{memory_exponent_length:.2f}, time ~ L^{time_exponent_length:.2f} "
        f"({fixed_rollouts} rollouts); memory ~ R^{memory_exponent_rollouts:.2f}, "
        f"time ~ R^{time_exponent_rollouts:.2f} ({reference} tokens); "
        f"naive memory ~ L^{naive_memory_exponent_length:.2f}"
    )
    report = {"device": args.device, "shape": asdict(shape), "completion_tokens": completion, "results": results}
    text = "\n".join(lines) + "\n\n" + fits + "\n"
    if not args.quick:
        predictions = predict_7b()
        report["qwen2.5_7b_prediction"] = predictions
        text += (
            "\nQwen2.5-7B, 15K-token prompts + 8 x 1K completions, one 80 GB GPU (ZeRO-3 over 8, gradient "
            "checkpointing, flash-attention), as the memory model plans a window of the long pass:\n\n"
            "| adapters | vLLM | prompts in the window | forward size | tokens per forward | forwards | "
            "long pass GiB | states GiB | vLLM GiB | s per prompt |\n|---|---|---:|---|---:|---|---:|---:|---:|---:|\n"
        )
        text += "".join(
            f"| {p['adapters']} | {p['generation']} | {p['prompts']} | {p['forward_size']} | "
            f"{p['tokens_per_forward']} | {p['forwards']} {p['plan']} | {p['long_pass_gib']:.1f} | "
            f"{p['states_gib']:.1f} | {p['vllm_gib']:.0f} | {p['seconds_per_prompt']:.1f} |\n"
            for p in predictions
        )
        long_contexts = predict_long_contexts()
        report["long_context_prediction"] = long_contexts
        text += (
            "\nPast one GPU: 8 x 80 GB, ZeRO-3, vLLM on a server, prompts with 8 x 1K completions, each forward "
            "split over a sequence-parallel group:\n\n| model | prompt tokens | prompts per process | sp | tokens "
            "per rank | plan | long pass GiB | states GiB | fits | long pass s per step | all-to-all GiB per rank |\n"
            "|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|\n"
        )
        text += "".join(
            f"| {p['model']} | {p['prompt_tokens']} | {p['prompts_per_process']} | {p['sequence_parallel']} | "
            f"{p['tokens_per_rank']} | {p['plan']} | {p['long_pass_gib']:.1f} | {p['states_gib']:.1f} | "
            f"{'yes' if p['fits'] else 'no'} | {p['seconds_per_step']:.0f} | {p['exchanged_gib']:.0f} |\n"
            for p in long_contexts
        )
    if args.device == "cpu":
        longest = contexts[-1]
        split = sequence_parallel_arm(longest, completion, args.run_dir, args.quick)
        report["sequence_parallel"] = split
        arms = split["arms"]
        text += (
            f"\nSequence parallelism at the longest length ({longest} tokens, {split['rollouts']} completions per "
            "process, two processes, all but the last forward recomputed): per-rank peak "
            f"{arms[2]['peak_mib']:.0f} MiB at sp=2 vs {arms[1]['peak_mib']:.0f} MiB at sp=1 "
            f"({split['peak_ratio']:.2f}x), long pass {arms[2]['seconds']:.1f} s vs {arms[1]['seconds']:.1f} s "
            f"({split['time_ratio']:.2f}x)\n"
        )
    print("\n" + text)
    with open(os.path.join(args.run_dir, "long_pass_scaling.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(args.run_dir, "long_pass_scaling.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    plot(results, os.path.join(args.run_dir, "long_pass_scaling.png"))
    split_figures = ""
    if "sequence_parallel" in report:
        split_figures = (
            f" sp2_peak_ratio={report['sequence_parallel']['peak_ratio']:.3f}"
            f" sp2_time_ratio={report['sequence_parallel']['time_ratio']:.3f}"
        )
    print(
        f"memory_exponent_L={memory_exponent_length:.3f} memory_exponent_rollouts={memory_exponent_rollouts:.3f} "
        f"shared_time_ratio_8x4k={time_ratio:.3f}{split_figures}"
    )


if __name__ == "__main__":
    sys.exit(main())
