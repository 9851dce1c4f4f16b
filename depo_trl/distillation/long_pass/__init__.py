"""The long pass: the completion log-probabilities of a window's rollouts under their long prompts, for every variant
of the distillation term (docs/design.md, "The long-context pass").

Its unit of work is a *forward*: one model call, on one packed row (a group per prompt, its rollouts after it) or,
without prefix sharing, one padded batch. `plan.py` splits a window into forwards, `memory.py` sizes them and decides
what they keep for the backward, `checkpointing.py` applies that decision, `packed_row.py` and `attention.py` build and
compute a packed row, and `runner.py` ([`LongPass`]) runs the plan alike on every process.
"""

from .attention import enable_prefix_sharing, install_shared_prefix_attention, layer_attention_windows
from .checkpointing import uses_layer_checkpointing
from .memory import LongPassMemory, PassPlan, available_memory, forward_size, holds, plan_pass
from .packed_row import SHARED_PREFIX_KWARG, PackedRow, pack_row, packed_row_log_probs
from .plan import forward_tokens, packed_row_tokens, plan_forwards
from .runner import LongPass


__all__ = [
    "SHARED_PREFIX_KWARG",
    "LongPass",
    "LongPassMemory",
    "PackedRow",
    "PassPlan",
    "available_memory",
    "enable_prefix_sharing",
    "forward_size",
    "forward_tokens",
    "holds",
    "install_shared_prefix_attention",
    "layer_attention_windows",
    "pack_row",
    "packed_row_log_probs",
    "packed_row_tokens",
    "plan_forwards",
    "plan_pass",
    "uses_layer_checkpointing",
]
