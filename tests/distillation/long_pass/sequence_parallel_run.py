"""Two processes run a window's long pass split over a sequence-parallel group, and each alone, and compare: launched
by test_sequence_parallel.py as `accelerate launch --multi_gpu --num_processes 2 sequence_parallel_run.py OUT CASE`.

Each process has its own rollouts (process 0: two prompts whose packed rows have odd lengths; process 1: one prompt,
or none). The loss is sequence-level and nonlinear in each rollout's log-probs (as GSPO's ratio), so a rollout's
tokens split over the two processes must meet before it is computed. Written to `OUT/rank<r>.json`: the largest gaps
between the split pass and the processes' own passes (log-probs; gradients summed over both processes, as data
parallelism sums them), and the gradients' size.
"""

import json
import os
import sys
from unittest import mock

import torch
import torch.distributed as dist
from accelerate import Accelerator
from transformers import Qwen2Config, Qwen2ForCausalLM
from trl.trainer.utils import add_fused_lm_head

from depo_trl.distillation import LongPass, PassPlan, Rollouts
from depo_trl.distillation.long_pass import install_shared_prefix_attention, runner
from depo_trl.distillation.long_pass.sequence_parallel import SequenceParallelGroup


def window(rank: int, case: str) -> Rollouts:
    generator = torch.Generator().manual_seed(rank)
    prompts = {0: [41, 30], 1: [] if case == "empty" else [27]}[rank]
    long_prompt_ids, completions = [], []
    for length in prompts:
        prompt = torch.randint(5, 200, (length,), generator=generator)
        for completion in (5, 4, 6):
            long_prompt_ids.append(prompt)
            completions.append(torch.randint(5, 200, (completion,), generator=generator))
    if not completions:  # a process whose window has no rollout in the pass still has a generation batch
        long_prompt_ids, completions = [torch.randint(5, 200, (9,), generator=generator)], [torch.tensor([7])]
    width = max(len(c) for c in completions)
    ids = torch.stack([torch.nn.functional.pad(c, (0, width - len(c))) for c in completions])
    mask = torch.stack([torch.arange(width) < len(c) for c in completions]).long()
    return Rollouts(long_prompt_ids, ids, mask, mask)


def sequence_loss(rows: torch.Tensor, logps: torch.Tensor, rollouts: Rollouts) -> torch.Tensor:
    mask = rollouts.loss_mask[rows].float()
    mean = (logps * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return (torch.exp(mean / 4) * torch.linspace(-1.0, 1.0, len(rows))).sum()


def main(output_dir: str, case: str) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config)
    if case == "checkpointed":
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    add_fused_lm_head(model, temperature=1.0)
    install_shared_prefix_attention("sdpa")
    rollouts = window(rank, case)
    rows = torch.arange(len(rollouts.long_prompt_ids)) if not (case == "empty" and rank == 1) else torch.arange(0)
    group = SequenceParallelGroup.create(2, rank, 2)
    how = {"recomputed": PassPlan.RECOMPUTED, "checkpointed": PassPlan.HELD}.get(case, PassPlan.HELD)
    results = {}
    for name, sequence_parallel in (("alone", None), ("split", group)):
        long_pass = LongPass(accelerator, None, 0, share_prefix=True, requested_tokens=48, memory_fraction=0.8,
                             rollouts_per_prompt=3, sequence_parallel=sequence_parallel)  # fmt: skip
        model.zero_grad()
        with mock.patch.object(runner, "plan_pass", lambda *sizes: how):
            loss, logps = long_pass.run(model, rollouts, rows, lambda r, lp: sequence_loss(r, lp, rollouts))
        loss.backward()
        gradients = torch.cat([parameter.grad.flatten() for parameter in model.parameters()])
        dist.all_reduce(gradients)  # what data parallelism sums
        results[name] = (logps, gradients)
    (alone_logps, alone_gradients), (split_logps, split_gradients) = results["alone"], results["split"]
    report = {
        "log_prob_gap": (alone_logps - split_logps).abs().max().item(),
        "gradient_gap": (alone_gradients - split_gradients).abs().max().item(),
        "gradient_size": alone_gradients.abs().max().item(),
        "rows": len(rows),
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)
