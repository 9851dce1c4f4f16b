"""How a window's rollouts are split into forwards, and how many tokens each forward holds.

A forward is one model call of the long pass. With prefix sharing its input is one packed row (`packed_row.py`) of
groups, each group a prompt with some of its rollouts; without, a padded batch of `[prompt, completion]` rows, one
rollout per group. The memory model (`memory.py`) says how many tokens a forward may hold.
"""

from collections.abc import Hashable, Sequence


def packed_row_tokens(prompt_length: int, completion_lengths: Sequence[int]) -> int:
    """Length of a packed row: the prompt once, and each completion after its own copy of the last prompt token."""
    return prompt_length + sum(completion_lengths) + len(completion_lengths) - 1


def plan_forwards(
    prompt_keys: Sequence[Hashable],
    prompt_lengths: Sequence[int],
    completion_lengths: Sequence[int],
    token_budget: int | None,
    share_prefix: bool,
) -> list[list[list[int]]]:
    """Split rollouts into forwards: `forwards[f][g]` lists the rollouts of group `g` of forward `f`.

    With sharing, a group is one prompt with its rollouts (a prompt whose rollouts do not fit in `token_budget`
    tokens, [`packed_row_tokens`], is split over several groups, each with its own copy of the prompt), and a
    forward is one packed row of groups whose tokens add up to at most the budget. Without, a group is one rollout,
    and a forward batches them while their count times the widest prompt plus the longest completion fits.
    `token_budget` None: no limit. A group that alone exceeds the budget gets a forward of its own.
    """
    budget = token_budget or float("inf")
    if share_prefix:
        prompts: dict[Hashable, list[int]] = {}
        for rollout, key in enumerate(prompt_keys):
            prompts.setdefault(key, []).append(rollout)
        groups = []
        for rollouts in prompts.values():
            group: list[int] = []
            for rollout in rollouts:
                candidate = group + [rollout]
                lengths = [completion_lengths[r] for r in candidate]
                if group and packed_row_tokens(prompt_lengths[rollout], lengths) > budget:
                    groups.append(group)
                    candidate = [rollout]
                group = candidate
            groups.append(group)
    else:
        groups = [[rollout] for rollout in range(len(prompt_keys))]
    forwards: list[list[list[int]]] = []
    for group in groups:
        if (
            forwards
            and forward_tokens(forwards[-1] + [group], prompt_lengths, completion_lengths, share_prefix) <= budget
        ):
            forwards[-1].append(group)
        else:
            forwards.append([group])
    return forwards


def forward_tokens(
    forward: list[list[int]], prompt_lengths: Sequence[int], completion_lengths: Sequence[int], share_prefix: bool
) -> int:
    """Tokens one forward of [`plan_forwards`] holds: its packed row of groups, or its padded batch of rollouts
    (padded to the longest completion of all, as [`plan_forwards`] plans them)."""
    if share_prefix:
        return sum(
            packed_row_tokens(prompt_lengths[group[0]], [completion_lengths[r] for r in group]) for group in forward
        )
    return len(forward) * (max(prompt_lengths[group[0]] for group in forward) + max(completion_lengths, default=0))


def one_prompt_forward_tokens(
    prompt_keys: Sequence[Hashable],
    prompt_lengths: Sequence[int],
    completion_lengths: Sequence[int],
    share_prefix: bool,
) -> int:
    """Tokens of the largest forward that holds one prompt with all its rollouts: the budget when none is set, so
    that memory follows one prompt, not the whole optimizer window."""
    prompts: dict[Hashable, list[int]] = {}
    for rollout, key in enumerate(prompt_keys):
        prompts.setdefault(key, []).append(rollout)
    forwards = [[rollouts] if share_prefix else [[r] for r in rollouts] for rollouts in prompts.values()]
    return max((forward_tokens(f, prompt_lengths, completion_lengths, share_prefix) for f in forwards), default=1)
