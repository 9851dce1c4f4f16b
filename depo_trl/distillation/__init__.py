"""DePO's long-context term (docs/design.md, "The method" and "The long-context pass"): one class per variant,
built per generation batch and run per optimizer window by [`~depo_trl.DePOTrainer`].

A new variant is one file here with a [`Distillation`] subclass, and one line in [`DISTILLATIONS`].
"""

from .base import Accumulation, ClippedObjective, Distillation, GenerationBatch, Window, WindowRecord
from .iw import IWDistillation
from .kd import KDDistillation
from .long_pass import LongPass, LongPassMemory, PassPlan, available_memory, forward_size, holds, plan_pass
from .rollouts import Rollouts, tokenize_long_prompts


DISTILLATIONS: dict[str, type[Distillation]] = {term.name: term for term in (KDDistillation, IWDistillation)}

__all__ = [
    "DISTILLATIONS",
    "Accumulation",
    "ClippedObjective",
    "Distillation",
    "GenerationBatch",
    "IWDistillation",
    "KDDistillation",
    "LongPass",
    "LongPassMemory",
    "PassPlan",
    "Rollouts",
    "Window",
    "WindowRecord",
    "available_memory",
    "forward_size",
    "holds",
    "plan_pass",
    "tokenize_long_prompts",
]
