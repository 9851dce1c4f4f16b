import os
from dataclasses import dataclass, field

from accelerate.utils import DistributedType
from transformers.utils import logging
from trl import GRPOConfig

from .arms import ARMS, arm_for
from .distillation import DISTILLATIONS
from .distillation.long_pass import sequence_parallel
from .exact_resume import check_best_saves, generation_batch_span, save_steps_at_boundaries
from .user_errors import UsageError


logger = logging.get_logger(__name__)


@dataclass
class DePOConfig(GRPOConfig):
    r"""
    Configuration class for the [`DePOTrainer`].

    DePO samples rollouts from a short context, trains on them with GRPO/DAPO/GSPO (every [`~trl.GRPOConfig`] field
    applies unchanged), and distils the correct rollouts into the same policy conditioned on the long context. The same
    class configures the paper's baselines through `rollout_context` and `distillation`.

    Parameters:
        rollout_context (`str`, *optional*, defaults to `"short"`):
            Prompt the rollouts are sampled from: `"short"` (the `prompt` column), `"long"` (the `long_prompt` column)
            or `"mixed"` (per prompt group, short or long with probability 1/2, seeded per row and step).
        distillation (`str`, *optional*, defaults to `"kd"`):
            Long-context term: `"kd"` (conditional distillation of correct rollouts, DePO), `"iw"` (importance-weighted
            off-policy RL on the long context, DePO-IW) or `"none"` (plain RL, for the baselines).
        distillation_coef (`float`, *optional*, defaults to `1.0`):
            Weight lambda of the long-context term in `J = J_PX + lambda * J_KD`.
        distillation_reward_threshold (`float`, *optional*, defaults to `1.0`):
            Rollouts whose (weighted, summed) reward is at least this value are distilled (`distillation="kd"`).
        max_long_prompt_length (`int`, *optional*):
            If set, rows whose rendered long prompt has more tokens are dropped before training, with one warning.
        distillation_forward_tokens (`int`, *optional*):
            Tokens one forward of the long-context pass holds (a packed row of prompts with their rollouts; a prompt
            whose rollouts do not fit is split). Defaults to what the memory model says fits: the whole optimizer
            window when it does, else forwards that fit beside everything the window's forwards keep for the
            backward, else forwards recomputed in the backward.
        distillation_memory_fraction (`float`, *optional*, defaults to `0.8`):
            Share of the memory free when the long pass starts (accelerator memory, or RAM on a CPU) that it may
            fill. The memory model sizes its forwards and decides whether they are kept for the backward or
            recomputed in it (each recomputed forward runs its backbone once more).
        share_long_prefix (`bool`, *optional*, defaults to `True`):
            Compute a long prompt once for all its rollouts (one packed row, computed by the model's own SDPA or
            flash-attention). Other attention implementations fall back to one sequence per rollout, with a warning.
        shuffle_prompt_groups (`bool`, *optional*, defaults to `True`):
            Shuffle a generation batch by whole prompt groups before it is cut into optimizer steps, so a step's
            mini-batch holds whole prompts (the paper's mini-batches are counted in prompts) and the long pass computes
            each long prompt once per step. `False`: TRL's shuffle of single rollouts.

    > Parameters that control how the trainer's weights reach vLLM (`use_vllm=True`)

        vllm_weight_sync (`str`, *optional*, defaults to `"trl"`):
            `"trl"`: TRL's own transfer (NCCL broadcast to a server, `load_weights` on a colocated engine; both need
            CUDA, and a server needs an NCCL route to the trainer). `"reload"`: vLLM's `reload_weights`, from a
            safetensors checkpoint the trainer writes to `vllm_weight_sync_dir` (server mode) or from the parameters
            in memory (colocate mode); it runs on CPUs too, and serves a generation server the trainer can reach only
            over HTTP and a shared disk.
        vllm_request_timeout (`float`, *optional*, defaults to `600.0`):
            Seconds a request to the vLLM server (a batch's generation, a weight reload) may take before the run
            stops with an error naming the server; a timed-out request is not retried.
        vllm_weight_sync_dir (`str`, *optional*):
            Folder the trainer writes the weights to for a server with `vllm_weight_sync="reload"`; the server must
            read it at the same path. Each sync's files are removed once the server has reloaded them. Defaults to
            `<output_dir>/_vllm_weights` (a name Transformers' push to the Hub leaves out, like its `_*` files).

    > Parameters named differently from [`~trl.GRPOConfig`]

        activation_checkpointing (`bool`, *optional*, defaults to `True`):
            Checkpoint the model's layers (their activations are recomputed in the backward) to save memory: TRL's
            default for `gradient_checkpointing`, under the name transformers reads now. The long-context pass turns
            it off for its forwards where they fit without it.
        gradient_checkpointing (`bool`, *optional*):
            Deprecated alias of `activation_checkpointing`: it still works, and transformers warns that it is
            deprecated.
    """

    rollout_context: str = field(
        default="short",
        metadata={
            "help": "Prompt the rollouts are sampled from: 'short' (the `prompt` column), 'long' (the `long_prompt` "
            "column) or 'mixed' (per prompt group, short or long with probability 1/2, seeded per row and step).",
            "choices": ["short", "long", "mixed"],
        },
    )
    distillation: str = field(
        default="kd",
        metadata={
            "help": "Long-context term: 'kd' (conditional distillation of the correct short-context rollouts into "
            "the long context, DePO), 'iw' (importance-weighted off-policy RL on the long context, DePO-IW) or 'none' "
            "(plain RL, for the baselines).",
            "choices": [*DISTILLATIONS, "none"],
        },
    )
    distillation_coef: float = field(
        default=1.0,
        metadata={"help": "Weight lambda of the long-context term: J = J_PX + lambda * J_KD. The paper uses 1.0."},
    )
    distillation_reward_threshold: float = field(
        default=1.0,
        metadata={
            "help": "Rollouts whose reward (weighted sum over the reward functions) is at least this value are "
            "distilled into the long context. 1.0 with the `em` reward means exact match."
        },
    )
    max_long_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "If set, rows whose long prompt, rendered with the chat template, has more tokens than this are "
            "dropped before training (one warning says how many); it is an error if no row remains."
        },
    )

    distillation_forward_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens one forward of the long-context pass holds (a packed row of prompts with their rollouts; "
            "a prompt whose rollouts do not fit is split). Default: what the memory model says fits, within "
            "distillation_memory_fraction of the free memory."
        },
    )
    distillation_memory_fraction: float = field(
        default=0.8,
        metadata={
            "help": "Share of the memory free when the long pass starts (accelerator memory, or RAM on a CPU) that it "
            "may fill: sizes its forwards and decides whether they are kept for the backward or recomputed in it."
        },
    )
    share_long_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute each long prompt once for all its rollouts (one packed row, computed by the model's own "
            "SDPA or flash-attention). Other attention implementations fall back to one sequence per rollout."
        },
    )
    shuffle_prompt_groups: bool = field(
        default=True,
        metadata={
            "help": "Shuffle a generation batch by whole prompt groups before it is cut into optimizer steps, so a "
            "step's mini-batch holds whole prompts (the paper's mini-batches are counted in prompts) and the long "
            "pass computes each long prompt once per step. False: TRL's shuffle of single rollouts."
        },
    )

    vllm_weight_sync: str = field(
        default="trl",
        metadata={
            "help": "How the trainer's weights reach vLLM: 'trl' (TRL's NCCL transfer to a server, load_weights "
            "colocated; CUDA only) or 'reload' (vLLM's reload_weights: a server reloads a safetensors checkpoint from "
            "vllm_weight_sync_dir, a colocated engine from memory; runs on CPUs and without an NCCL route).",
            "choices": ["trl", "reload"],
        },
    )
    vllm_request_timeout: float = field(
        default=600.0,
        metadata={
            "help": "Seconds a request to the vLLM server (a batch's generation, a weight reload) may take before the "
            "run stops with an error naming the server; a timed-out request is not retried."
        },
    )
    vllm_weight_sync_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder the weights are written to for a vLLM server with vllm_weight_sync='reload'; the server "
            "must read it at the same path; each sync's files are removed once the server has reloaded them. Defaults "
            "to <output_dir>/_vllm_weights (a push to the Hub leaves out names starting with _)."
        },
    )

    # TRL defaults `gradient_checkpointing` to True, a name transformers has deprecated and warns about in every run;
    # DePO sets the same default under the new name, and a recipe that sets the old one still gets its warning
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Checkpoint the model's layers (their activations are recomputed in the backward) to save "
            "memory. Defaults to True (TRL's default for gradient_checkpointing, under the name transformers reads).",
            "nargs": "?",
            "const": True,
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of activation_checkpointing: it still works, and transformers warns.",
            "nargs": "?",
            "const": True,
        },
    )

    def __post_init__(self):
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        if self.activation_checkpointing is not None:  # transformers before the rename reads only the old name
            self.gradient_checkpointing = self.activation_checkpointing
        super().__post_init__()
        # The paper's arms, and any other registered term on short-context rollouts (a new variant of the term)
        new_term = self.rollout_context == "short" and self.distillation in DISTILLATIONS
        if arm_for(self.rollout_context, self.distillation) is None and not new_term:
            valid = "; ".join(
                f"rollout_context={a.rollout_context!r}, distillation={a.distillation!r} ({a.paper_name})"
                for a in ARMS.values()
            )
            raise UsageError(
                f"rollout_context={self.rollout_context!r} with distillation={self.distillation!r} is not a DePO "
                f"configuration. The valid combinations are: {valid}."
            )
        if self.distillation_coef < 0:
            raise UsageError(f"distillation_coef must be >= 0, got {self.distillation_coef}.")
        if self.distillation in DISTILLATIONS:
            DISTILLATIONS[self.distillation].check_config(self)
        # A checkpoint inside a generation batch cannot be resumed exactly: TRL regenerates the batch's rollouts, with
        # other samples, where the uninterrupted run trained on the rest of the buffered ones. Steps given as a ratio
        # resolve when training starts, where ExactResumeCallback checks them
        span = generation_batch_span(self)
        if self.save_strategy == "steps" and self.save_steps >= 1 and self.save_steps % span:
            if self.save_steps != self.__dataclass_fields__["save_steps"].default:
                raise UsageError(
                    f"save_steps={self.save_steps}: a generation batch spans {span} optimizer steps "
                    f"(steps_per_generation={self.steps_per_generation} x num_iterations={self.num_iterations} "
                    f"micro-steps, gradient_accumulation_steps={self.gradient_accumulation_steps}), and a checkpoint "
                    f"inside one does not resume exactly (its rollouts would be generated again); set save_steps to a "
                    f"multiple of {span}."
                )
            # The default, which the user did not choose: round it up
            whole_eval_steps = int(self.eval_steps) if self.eval_steps is not None and self.eval_steps >= 1 else None
            rounded = save_steps_at_boundaries(self, int(self.save_steps), whole_eval_steps)
            logger.warning(
                f"save_steps is not set, and its default {self.save_steps} falls inside a generation batch of {span} "
                f"optimizer steps, where a checkpoint would not resume exactly: checkpoints are saved every {rounded} "
                "steps."
            )
            self.save_steps = rounded
        if self.eval_steps is not None and self.eval_steps >= 1:
            check_best_saves(self, int(self.eval_steps))
        problem = sequence_parallel.configuration_problem(self, sequence_parallel.launched_size())
        if problem:
            raise UsageError(problem + ".")
        # Accelerate shards with FSDP only on accelerators: launched with an FSDP config on CPUs it silently runs DDP
        state = getattr(self, "distributed_state", None)
        fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if (
            fsdp_asked
            and state is not None
            and state.distributed_type in (DistributedType.MULTI_CPU, DistributedType.NO)
        ):
            raise UsageError(
                f"accelerate launch with an FSDP config on {'CPUs' if state.device.type == 'cpu' else 'one process'}: "
                f"Accelerate runs {state.distributed_type.value} there, not FSDP; on CPUs launch with "
                "accelerate_configs/ddp.yaml, zero2.yaml or zero3.yaml, and keep fsdp2.yaml for GPUs."
            )
        if self.vllm_weight_sync not in ("trl", "reload"):
            raise UsageError(f"vllm_weight_sync must be 'trl' or 'reload', got {self.vllm_weight_sync!r}.")
        if self.use_vllm and self.vllm_weight_sync == "reload" and self.vllm_enable_sleep_mode:
            raise UsageError(
                "vllm_enable_sleep_mode discards the colocated engine's weights, which vllm_weight_sync='reload' "
                "reloads in place; set vllm_weight_sync='trl' or vllm_enable_sleep_mode=false."
            )
        if self.vllm_request_timeout <= 0:
            raise UsageError(
                f"vllm_request_timeout must be a positive number of seconds, got {self.vllm_request_timeout}."
            )
        if self.vllm_weight_sync_dir is None:
            self.vllm_weight_sync_dir = os.path.join(self.output_dir, "_vllm_weights")
        if self.max_long_prompt_length is not None and self.max_long_prompt_length <= 0:
            raise UsageError(f"max_long_prompt_length must be a positive integer, got {self.max_long_prompt_length}.")
        if not 0 < self.distillation_memory_fraction <= 1:
            raise UsageError(
                f"distillation_memory_fraction must be in (0, 1], got {self.distillation_memory_fraction}: it is the "
                "share of the free memory the long pass may fill."
            )
        smallest = (self.max_long_prompt_length or 1) + (self.max_completion_length or 0)
        if self.distillation_forward_tokens is not None and self.distillation_forward_tokens < smallest:
            raise UsageError(
                f"distillation_forward_tokens={self.distillation_forward_tokens} cannot hold one long prompt and one "
                f"completion ({smallest} tokens with max_long_prompt_length={self.max_long_prompt_length} and "
                f"max_completion_length={self.max_completion_length}); raise it."
            )

    @property
    def uses_long_prompt(self) -> bool:
        """Whether training needs the dataset's `long_prompt` column."""
        return self.distillation != "none" or self.rollout_context != "short"
