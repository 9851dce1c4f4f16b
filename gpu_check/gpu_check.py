"""The prepared GPU check: what only a CUDA device can answer, in order of importance, within a time limit.

    bash gpu_check/run_gpu_check.sh OUT_DIR     # on the GPU machine: installs .gpu_bundle offline and runs this
    python gpu_check/gpu_check.py --device cuda --output-dir OUT_DIR [--time-limit 480]
    python gpu_check/gpu_check.py --device cpu --quick --output-dir OUT_DIR   # the dry run the test suite makes

1. `long_pass_exactness`: the shared-prefix long pass equals the naive pass (completion log-probs and the gradients
   of a KD-like and an IW-like loss), with the model's layers checkpointed as the recipes train, for SDPA and, when it
   is importable, flash-attention 2, in float32 and bfloat16 (tolerances in `TOLERANCES`); each case both held under
   the layer checkpoints (the recipes' regime at 7B) and with them turned off (where the window fits).
2. `depo_steps`: three DePO steps of the tiny recipe (`recipes/tiny/depo.yaml`) through the entry point, in bfloat16 on
   the GPU: the parameters move and the distillation term runs.
3. `fsdp2_steps`: three DePO steps of the tiny recipe launched with `accelerate_configs/fsdp2.yaml` on one GPU (on a
   CPU: that the launch is refused in one line, since Accelerate would run DDP).
4. `sequence_parallel_steps`: on two GPUs, three DePO steps of the tiny recipe with `accelerate_configs/zero3-sp.yaml`
   split over a group of two against groups of one: equal parameters (skipped on one GPU).
5. `long_pass_scaling`: the long pass alone at 4K, 8K, 16K and 32K-token prompts x 8 rollouts of 1K tokens on a random
   Qwen2 of Qwen2-1.5B's width (4 layers), shared and naive: time and peak `torch.cuda.max_memory_allocated` beside the
   memory model's prediction (`benchmarks/long_pass_scaling.py`, each point in its own process).
6. `step_cost`: `benchmarks/step_cost.py --device cuda`.

Each step is timed and guarded: a failure is recorded with its traceback's end and the next step still runs; no step
starts past the time limit, and the results so far are written after every step: `gpu_check.json` (everything) and
`gpu_check.md` (a summary: device, versions, every figure) in `--output-dir`.
"""

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from unittest import mock

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CPU benchmarks it runs on the GPU (`long_pass_scaling` is imported, `step_cost` run as a script)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from depo_trl.user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors  # noqa: E402


# Largest allowed gap to the naive pass: absolute on log-probabilities, relative (max |a - b| / max |b|) on gradients.
# bfloat16 keeps 8 bits of mantissa and the two passes sum in different orders; float32 is exact up to summation order.
TOLERANCES = {
    torch.float32: {"log_probs": 1e-4, "gradients": 1e-3},
    torch.bfloat16: {"log_probs": 0.1, "gradients": 0.05},
}


def exactness_case(device: str, dtype: torch.dtype, implementation: str, loss: str, plan) -> dict:
    """One comparison of the shared pass (the trainer's own `LongPass`) with the naive one on a small random Qwen2:
    two prompts of different lengths, four completions each, of different lengths; both passes run their forwards as
    `plan` (a `PassPlan`) says, whatever the memory model would choose for this small model."""
    from accelerate import Accelerator
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from depo_trl.distillation import LongPass, Rollouts
    from depo_trl.distillation.long_pass import install_shared_prefix_attention
    from depo_trl.distillation.long_pass import runner as long_pass_runner
    from depo_trl.losses import importance_weighted_loss

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024,
    )  # fmt: skip
    config._attn_implementation = implementation
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    model.activation_checkpointing_enable()  # as Trainer.train() does for the recipes' gradient_checkpointing
    model.train()
    add_fused_lm_head(model, temperature=1.0)
    assert install_shared_prefix_attention(implementation), f"{implementation} cannot run the shared pass"
    prompts = [torch.randint(10, 512, (length,), device=device) for length in (300, 200)]
    lengths = [40, 25, 33, 12, 40, 7, 29, 18]
    completions = torch.randint(10, 512, (8, 40), device=device)
    mask = (torch.arange(40, device=device)[None] < torch.tensor(lengths, device=device)[:, None]).long()
    rollouts = Rollouts([prompts[index // 4] for index in range(8)], completions, mask, mask)
    weights = torch.rand(8, 40, device=device) * mask
    old = -torch.rand(8, 40, device=device)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.25, -0.25], device=device)

    def loss_of(rows, logps):
        if loss == "kd":
            return -(weights[rows] * logps).sum()
        return importance_weighted_loss(logps, old[rows], advantages[rows], mask[rows], weights[rows], 0.2, 0.28)

    def naive_log_probs(model, input_ids, attention_mask, logits_to_keep):
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True).log_probs[
            :, -logits_to_keep:
        ]

    results = {}
    for name, share in (("naive", False), ("shared", True)):
        model.zero_grad(set_to_none=True)
        runner = LongPass(
            Accelerator(cpu=device == "cpu"), naive_log_probs, pad_token_id=0, share_prefix=share,
            requested_tokens=None, memory_fraction=0.8, rollouts_per_prompt=4,
        )  # fmt: skip
        with mock.patch.object(long_pass_runner, "plan_pass", lambda *sizes: plan):
            value, logps = runner.run(model, rollouts, torch.arange(8, device=device), loss_of)
        value.backward()
        gradients = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[name] = (logps * mask, gradients)
    (naive_logps, naive_grads), (shared_logps, shared_grads) = results["naive"], results["shared"]
    log_prob_gap = (shared_logps - naive_logps).abs().max().item()
    gradient_gap = max(
        ((shared_grads[n] - naive_grads[n]).abs().max() / naive_grads[n].abs().max().clamp(min=1e-12)).item()
        for n in naive_grads
    )
    tolerance = TOLERANCES[dtype]
    return {
        "attention": implementation,
        "dtype": str(dtype).removeprefix("torch."),
        "loss": loss,
        "plan": plan.name.lower(),
        "log_prob_gap": log_prob_gap,
        "gradient_relative_gap": gradient_gap,
        "tolerances": tolerance,
        "passed": log_prob_gap <= tolerance["log_probs"] and gradient_gap <= tolerance["gradients"],
    }


def long_pass_exactness(device: str, quick: bool, deadline: float) -> dict:
    from transformers.utils import is_flash_attn_2_available

    from depo_trl.distillation import PassPlan

    implementations = ["sdpa"] + (["flash_attention_2"] if device == "cuda" and is_flash_attn_2_available() else [])
    dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    cases = []
    for implementation in implementations:
        # flash-attention computes in half precision only
        for dtype in [torch.bfloat16] if implementation == "flash_attention_2" else dtypes:
            for loss in ("kd", "iw"):
                for plan in (PassPlan.HELD, PassPlan.WITHOUT_LAYER_CHECKPOINTS):
                    if time.monotonic() > deadline:
                        return {"cases": cases, "stopped": "time limit"}
                    cases.append(exactness_case(device, dtype, implementation, loss, plan))
    if not all(case["passed"] for case in cases):
        raise AssertionError(f"the shared pass departs from the naive one: {[c for c in cases if not c['passed']]}")
    return {"cases": cases, "flash_attention_2": "flash_attention_2" in implementations}


def depo_steps(device: str, quick: bool, output_dir: str) -> dict:
    """Three DePO steps of the tiny recipe through the entry point (`depo-train`'s own `main`)."""
    from safetensors.torch import load_file

    from depo_trl.scripts.depo import main
    from depo_trl.scripts.recipe import parse_recipe

    precision = ["--use_cpu", "false", "--bf16", "true"] if device == "cuda" else ["--use_cpu", "true"]
    run_dir = os.path.join(output_dir, "tiny_depo")
    arguments = ["--config", os.path.join(ROOT, "recipes", "tiny", "depo.yaml"), "--output_dir", run_dir]
    arguments += ["--max_steps", "3", "--save_strategy", "no", "--report_to", "none", *precision]
    trainer = main(*parse_recipe(arguments))
    before = load_file(os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start", "model.safetensors"))
    moved = max(
        (parameter.detach().float().cpu() - before[name].float()).abs().max().item()
        for name, parameter in trainer.model.named_parameters()
        if name in before
    )
    logs = [log for log in trainer.state.log_history if "loss" in log]
    distilled = [log.get("depo/kd_tokens", 0) for log in logs]
    if not (moved > 0 and any(distilled)):
        raise AssertionError(f"moved {moved}, distilled tokens per step {distilled}")
    return {
        "steps": len(logs),
        "largest_parameter_change": moved,
        "distilled_tokens_per_step": distilled,
        "kd_loss": [log.get("depo/kd_loss") for log in logs],
        "seconds_per_step": [log.get("step_time") for log in logs],
        "weights": str(trainer.model.dtype).removeprefix("torch."),
        "mixed_precision": trainer.accelerator.mixed_precision,
    }


def fsdp2_steps(device: str, output_dir: str, deadline: float) -> dict:
    """Three DePO steps of the tiny recipe launched with the shipped `accelerate_configs/fsdp2.yaml` on one GPU, the
    long pass split over several forwards. On a CPU, Accelerate would run DDP with that config: the check is then that
    the launch stops in one line (CPU processes are sharded for real in tests/integration/test_fsdp2.py)."""
    run_dir = os.path.join(output_dir, "tiny_fsdp2")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/fsdp2.yaml",
        "--num_processes", "1", "--mixed_precision", "bf16" if device == "cuda" else "no",
        os.path.join("depo_trl", "scripts", "depo.py"), "--config", "recipes/tiny/depo.yaml", "--output_dir", run_dir,
        "--max_steps", "3", "--save_strategy", "no", "--report_to", "none", "--max_long_prompt_length", "150",
        "--distillation_forward_tokens", "200",
    ]  # fmt: skip
    command += ["--use_cpu", "false", "--bf16", "true"] if device == "cuda" else []
    timeout = max(deadline - time.monotonic(), 1.0)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if device != "cuda":
        refused = [line for line in result.stderr.splitlines() if "FSDP config on CPUs" in line]
        if result.returncode == 0 or not refused:
            raise AssertionError(f"the FSDP config was not refused on a CPU: {result.stderr[-2000:]}")
        return {"refused_on_cpu": refused[0]}
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    with open(os.path.join(run_dir, "trainer_state.json")) as handle:
        logs = [log for log in json.load(handle)["log_history"] if "loss" in log]
    return {
        "steps": len(logs),
        "loss": [log["loss"] for log in logs],
        "kd_tokens": [log.get("depo/kd_tokens") for log in logs],
        "seconds_per_step": [log.get("step_time") for log in logs],
    }


def sequence_parallel_steps(device: str, output_dir: str, deadline: float) -> dict:
    """Three DePO steps of the tiny recipe (SGD without clipping, float32, the long pass in forwards recomputed in the
    backward) launched with `accelerate_configs/zero3-sp.yaml` on two processes, in one group (sp=2) and in groups of
    one (sp=1) on the same global batch: the largest parameter difference, against how far the parameters moved.
    Needs two GPUs (skipped, with a message, on one); the CPU dry run runs it on two gloo processes."""
    if device == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU: sequence parallelism needs two"}
    from safetensors.torch import load_file

    weights = {}
    for size in (1, 2):
        run_dir = os.path.join(output_dir, f"tiny_sp{size}")
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/zero3-sp.yaml",
            "--num_processes", "2", "--parallelism_config_sp_size", str(size), "--parallelism_config_dp_shard_size",
            str(2 // size), "--mixed_precision", "no", os.path.join("depo_trl", "scripts", "depo.py"),
            "--config", "recipes/tiny/depo.yaml", "--output_dir", run_dir, "--max_steps", "3", "--save_strategy",
            "no", "--report_to", "none", "--optim", "sgd", "--max_grad_norm", "0", "--learning_rate", "1e-2",
            "--max_long_prompt_length", "150", "--distillation_forward_tokens", "200",
            "--distillation_memory_fraction", "1e-12", "--use_cpu", "false" if device == "cuda" else "true",
        ]  # fmt: skip
        timeout = max(deadline - time.monotonic(), 1.0)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        weights[size] = load_file(os.path.join(run_dir, "model.safetensors"))
    start = load_file(os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start", "model.safetensors"))
    gap = max((weights[2][name].float() - tensor.float()).abs().max().item() for name, tensor in weights[1].items())
    moved = max((weights[1][n].float() - start[n].float()).abs().max().item() for n in start if n in weights[1])
    if not (moved > 1e-3 and gap < 1e-5):
        raise AssertionError(f"sp=2 departs from sp=1 by {gap} where the parameters moved {moved}")
    return {"largest_difference": gap, "parameters_moved": moved}


def long_pass_scaling(device: str, quick: bool, deadline: float) -> dict:
    import long_pass_scaling as scaling

    if quick:
        shape = scaling.ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)
        contexts, rollouts, completion = [256, 512], 2, 16
    else:  # Qwen2-1.5B's width, 4 of its 28 layers
        shape = scaling.ModelShape(hidden=1536, layers=4, heads=12, kv_heads=2, intermediate=8960, vocab=151936)
        contexts, rollouts, completion = [4096, 8192, 16384, 32768], 8, 1000
    from transformers.utils import is_flash_attn_2_available

    flash = device == "cuda" and is_flash_attn_2_available()
    dtype_bytes = 2 if device == "cuda" else 4
    points = []
    for context in contexts:
        for method in ("shared", "naive"):
            if time.monotonic() > deadline:
                return {"points": points, "stopped": "time limit"}
            point = scaling.Point(method, context, rollouts)
            try:
                result = scaling.run_point(point, shape, completion, device)
            except RuntimeError as error:  # the naive pass runs out of memory first
                result = {**vars(point), "error": str(error)}
            if method == "shared" and "error" not in result:
                result["predicted_mib"] = scaling.predicted_mib(shape, point, completion, dtype_bytes, flash)
            points.append(result)
    return {"shape": vars(shape), "completion_tokens": completion, "rollouts": rollouts, "points": points}


def step_cost(device: str, quick: bool, deadline: float) -> dict:
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "step_cost.py"), "--device", device]
    command += ["--steps", "1", "--rounds", "1" if quick else "2"]  # within the check's time limit
    if quick:
        command += ["--prompts", "2", "--generations", "2"]
        command += ["--completion-tokens", "4", "--long-distractors", "8", "--hidden", "32", "--layers", "2"]
    timeout = max(deadline - time.monotonic(), 1.0)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    last = result.stdout.strip().splitlines()[-1]
    return {"output": result.stdout[-3000:], **{k: float(v) for k, v in (item.split("=") for item in last.split())}}


def versions() -> dict:
    import importlib.metadata

    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "datasets", "accelerate", "flash-attn", "deepspeed", "depo_trl"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def summary(report: dict) -> str:
    lines = [f"# GPU check: {report['device_name']}", "", f"versions: {report['versions']}", ""]
    for name, step in report["steps"].items():
        lines.append(f"## {name}: {step['status']} ({step['seconds']:.1f} s)")
        if step["status"] != "ok":
            lines += ["", "```", step.get("error", ""), "```"]
        elif name == "long_pass_exactness":
            lines += [
                "",
                "| attention | dtype | loss | forwards | log-prob gap | gradient gap (relative) | passed |",
                "|---|---|---|---|---:|---:|---|",
            ]
            lines += [
                f"| {c['attention']} | {c['dtype']} | {c['loss']} | {c['plan']} | {c['log_prob_gap']:.2e} | "
                f"{c['gradient_relative_gap']:.2e} | {c['passed']} |"
                for c in step["result"]["cases"]
            ]
        elif name == "long_pass_scaling":
            lines += [
                "",
                "| method | prompt tokens | rollouts | seconds | peak MiB | memory model MiB |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for p in step["result"]["points"]:
                if "error" in p:
                    lines.append(f"| {p['method']} | {p['prompt_tokens']} | {p['rollouts']} | failed | | |")
                else:
                    predicted = f"{p['predicted_mib']:.0f}" if "predicted_mib" in p else ""
                    lines.append(
                        f"| {p['method']} | {p['prompt_tokens']} | {p['rollouts']} | {p['seconds']:.2f} | "
                        f"{p['peak_mib']:.0f} | {predicted} |"
                    )
        else:
            shown = {k: v for k, v in step["result"].items() if k != "output"}
            lines += ["", f"`{json.dumps(shown)}`"]
        lines.append("")
    return "\n".join(lines)


@reports_usage_errors("python gpu_check/gpu_check.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python gpu_check/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--time-limit", type=positive_int, default=480, help="Seconds; no step starts after it.")
    parser.add_argument("--quick", action="store_true", help="Small sizes: the CPU dry run of the test suite.")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; run the dry run with --device cpu --quick.")
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.time_limit
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "versions": versions(),
        "time_limit_s": args.time_limit,
        "steps": {},
    }
    steps: list[tuple[str, Callable[[], dict]]] = [
        ("long_pass_exactness", lambda: long_pass_exactness(args.device, args.quick, deadline)),
        ("depo_steps", lambda: depo_steps(args.device, args.quick, args.output_dir)),
        ("fsdp2_steps", lambda: fsdp2_steps(args.device, args.output_dir, deadline)),
        ("sequence_parallel_steps", lambda: sequence_parallel_steps(args.device, args.output_dir, deadline)),
        ("long_pass_scaling", lambda: long_pass_scaling(args.device, args.quick, deadline)),
        ("step_cost", lambda: step_cost(args.device, args.quick, deadline)),
    ]
    for name, step in steps:
        if time.monotonic() > deadline:
            report["steps"][name] = {"status": "skipped: time limit", "seconds": 0.0}
            continue
        begun = time.monotonic()
        try:
            report["steps"][name] = {"status": "ok", "result": step()}
        except Exception:
            report["steps"][name] = {"status": "failed", "error": traceback.format_exc()[-3000:]}
        report["steps"][name]["seconds"] = time.monotonic() - begun
        print(f"{name}: {report['steps'][name]['status']} ({report['steps'][name]['seconds']:.1f} s)", flush=True)
        with open(os.path.join(args.output_dir, "gpu_check.json"), "w") as handle:
            json.dump(report, handle, indent=2, default=str)
        with open(os.path.join(args.output_dir, "gpu_check.md"), "w") as handle:
            handle.write(summary(report))
    print(
        f"gpu_check: {sum(s['status'] == 'ok' for s in report['steps'].values())}/{len(steps)} steps ok in "
        f"{time.monotonic() - started:.0f} s; {os.path.join(args.output_dir, 'gpu_check.md')}"
    )


if __name__ == "__main__":
    main()
