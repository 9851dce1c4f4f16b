"""The long pass's control over activation checkpointing: recomputing a whole forward's backbone in the backward, or
running the model's checkpointed layers without their checkpoints (`memory.plan_pass` decides which)."""

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer


@contextmanager
def checkpointed_forward(module: torch.nn.Module) -> Iterator[None]:
    """While open, `module`'s forward runs under non-reentrant activation checkpointing: its activations are
    recomputed during the backward instead of kept.

    The long pass puts the model's backbone here, not the whole forward: TRL's fused LM head then keeps its saved
    weight the parameter itself (a recomputed one would be a detached copy, without the attributes ZeRO-3's gather
    of the head reads in its backward), and the head saves only the scored positions' hidden states.
    """
    had_own_forward = "forward" in module.__dict__
    original = module.forward
    module.forward = functools.partial(checkpoint, original, use_reentrant=False)
    try:
        yield
    finally:
        if had_own_forward:
            module.forward = original
        else:
            del module.forward


@contextmanager
def without_layer_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """While open, the model's layers run without their gradient checkpointing (transformers' per-layer flags), and
    keep their activations for the backward; the flags are restored after."""
    checkpointed = [module for module in model.modules() if getattr(module, "gradient_checkpointing", False)]
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in checkpointed:
            module.gradient_checkpointing = True


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack under the LM head (through a PEFT wrapper)."""
    return (model.get_base_model() if hasattr(model, "get_base_model") else model).base_model


def uses_layer_checkpointing(model: torch.nn.Module) -> bool:
    """Whether every decoder layer runs under gradient checkpointing (enabled by `Trainer.train()`). With
    `gradient_checkpointing_kwargs={"every_n_layers": n > 1}` the other layers keep their activations: the memory
    model then counts the model as not checkpointed (more memory per token than it keeps)."""
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    return bool(layers) and all(layer.gradient_checkpointing for layer in layers)


def reentrant_checkpointing_problem(args, uses_peft: bool) -> str | None:
    """Why the configuration's reentrant layer checkpointing cannot train the distillation term, or None.

    DePO's proxy forward and its long-context forwards run through the same layers before the step's one backward.
    Reentrant checkpointing recomputes each checkpointed layer in a backward of its own, so a parameter's gradient
    hook fires once per forward it took part in: DeepSpeed (ZeRO-2 and ZeRO-3) refuses the second reduction, and DDP
    refuses the second readiness when it looks for unused parameters, uses a static graph, or trains PEFT adapters
    (measured on two gloo processes; plain DDP trains). TRL itself turns reentrant checkpointing on for PEFT with
    ZeRO-3. `args` is a `DePOConfig`.
    """
    kwargs = getattr(args, "gradient_checkpointing_kwargs", None) or {}
    zero_stage = args.deepspeed_plugin.zero_stage if getattr(args, "deepspeed_plugin", None) is not None else None
    forced = uses_peft and zero_stage == 3  # GRPOTrainer sets use_reentrant=True there
    if not (args.gradient_checkpointing and (kwargs.get("use_reentrant") or forced) and args.distillation != "none"):
        return None
    if zero_stage is not None:
        where = f"with DeepSpeed ZeRO-{zero_stage}" + (" and PEFT, where TRL turns it on," if forced else "")
    elif args.world_size > 1 and (args.ddp_find_unused_parameters or args.ddp_static_graph or uses_peft):
        where = "with DDP looking for unused parameters, a static graph or PEFT adapters"
    else:
        return None
    fix = (
        "train the adapters with ZeRO-2 or DDP, or set activation_checkpointing: false"
        if forced
        else "set gradient_checkpointing_kwargs: {use_reentrant: false}"
    )
    return (
        f"gradient_checkpointing_kwargs: reentrant checkpointing {where} computes a parameter's gradient once per "
        f"forward, and DePO's proxy and long-context forwards share one backward; {fix}"
    )
