"""The runs the paper compares (its Tables 2 and 3), by the settings that make them: the one registry that the config's
validation, the recipes, the toy world, the benchmarks, the tests and the documentation tables are checked against."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    """One configuration of [`DePOTrainer`]: its name in recipes and commands, its settings, and the paper's name."""

    name: str
    rollout_context: str
    distillation: str
    paper_name: str
    description: str

    @property
    def settings(self) -> dict[str, str]:
        """The [`DePOConfig`] fields that make this arm."""
        return {"rollout_context": self.rollout_context, "distillation": self.distillation}


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("depo", "short", "kd", "DePO", "distils the correct short-context rollouts into the long context"),
        Arm("depo-iw", "short", "iw", "DePO-IW", "off-policy RL on the long context with the short-context rollouts"),
        Arm("short", "short", "none", "Short", "RL on short contexts"),
        Arm("long", "long", "none", "Long", "RL on long contexts"),
        Arm("short-long", "mixed", "none", "Short-Long", "RL on the short or the long context, per prompt group"),
    )
}


def arm_for(rollout_context: str, distillation: str) -> Arm | None:
    """The arm these settings make, or None if they make none."""
    return next(
        (a for a in ARMS.values() if (a.rollout_context, a.distillation) == (rollout_context, distillation)), None
    )


def arms_table() -> str:
    """The Markdown table of the arms, as README.md, recipes/README.md and docs/design.md show it."""
    lines = ["| arm | `rollout_context` | `distillation` | paper | what it trains |", "|---|---|---|---|---|"]
    lines += [
        f"| `{a.name}` | `{a.rollout_context}` | `{a.distillation}` | {a.paper_name} | {a.description} |"
        for a in ARMS.values()
    ]
    return "\n".join(lines)
