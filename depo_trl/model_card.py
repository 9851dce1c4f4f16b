"""What DePO adds to TRL's model card: the paper, the run's DePO settings and the recipe it was launched with."""

import re
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .config import DePOConfig


# TRL's model card cites a trainer's `_paper`; no arXiv id of the paper is known to this project, so only its title
PAPER = {
    "title": (
        "Decomposing Policy Optimization into Proxy Objective and Knowledge Distillation for Long-Context Reasoning"
    )
}

_SETTINGS = (
    "rollout_context",
    "distillation",
    "distillation_coef",
    "distillation_reward_threshold",
    "loss_type",
    "importance_sampling_level",
    "epsilon",
    "epsilon_high",
    "beta",
    "num_generations",
    "temperature",
    "learning_rate",
    "max_completion_length",
)


def depo_model_card_section(args: "DePOConfig", recipe: str | None = None) -> str:
    """Markdown appended to TRL's model card: the method with the paper's title, the DePO settings of the run, and
    the recipe (YAML text) it was launched with."""
    rows = "\n".join(f"| `{name}` | `{getattr(args, name)}` |" for name in _SETTINGS)
    section = (
        f"\n## DePO\n\nThis model was trained with DePO, from *{PAPER['title']}*: GRPO-family RL on rollouts sampled "
        "from a short context (gold documents and a few distractors), plus the distillation of those rollouts into "
        "the same policy conditioned on a long context (many more distractors).\n\n"
        f"| setting | value |\n|---|---|\n{rows}\n"
    )
    if recipe:
        section += f"\n### Recipe\n\n```yaml\n{recipe.rstrip()}\n```\n"
    return section


def card_for_repo(card: str, repo_id: str) -> str:
    """A run's model card (TRL's, with the DePO section) naming the Hub repository `repo_id` it is pushed to: the title
    and the quick start's model id, which a run trained without `push_to_hub` writes as `None`."""
    title = f"# Model Card for {repo_id.split('/')[-1]}"
    card = re.sub(r"^# Model Card for .*$", lambda _: title, card, count=1, flags=re.MULTILINE)
    quick_start = r'(pipeline\("text-generation", model=)"[^"]*"'
    return re.sub(quick_start, lambda match: f'{match[1]}"{repo_id}"', card, count=1)
