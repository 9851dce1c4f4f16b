"""How a window's rollouts are split into forwards (`depo_trl/distillation/long_pass/plan.py`): by prompt, within a
token budget, each rollout once."""

import functools
import random

import pytest

from depo_trl.distillation.long_pass import packed_row_tokens
from depo_trl.distillation.long_pass.plan import forward_tokens, one_prompt_forward_tokens, plan_forwards


KEYS = ["a", "b", "a", "a", "c", "b"]
PROMPT_LENGTHS = [10, 20, 10, 10, 5, 20]
COMPLETION_LENGTHS = [3, 4, 2, 5, 1, 6]


def test_plan_by_hand():
    plan = functools.partial(plan_forwards, KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS)
    assert plan(None, share_prefix=False) == [[[0], [1], [2], [3], [4], [5]]]
    # Shared: a forward is one packed row of prompt groups, here all three
    assert plan(None, share_prefix=True) == [[[0, 2, 3], [1, 5], [4]]]
    # Shared, 18 tokens: prompt a takes rollouts 0 and 2 (10 + 3 + 2 + 1 = 16), then 3 alone (15); each of b's
    # rollouts alone is over the budget (24, 26) and gets its own forward; c's (6) does not fit beside b's
    assert plan(18, share_prefix=True) == [[[0, 2]], [[3]], [[1]], [[5]], [[4]]]
    # Shared, 40 tokens: a's group (10 + 10 + 2 = 22), then b's (20 + 10 + 1 = 31) with c's (6) in the next row
    assert plan(40, share_prefix=True) == [[[0, 2, 3]], [[1, 5], [4]]]
    # Naive, 40 tokens: rows are padded to the widest prompt plus the longest completion (6)
    assert plan(40, share_prefix=False) == [[[0]], [[1]], [[2], [3]], [[4]], [[5]]]
    assert packed_row_tokens(10, [3, 2]) == 16


def test_one_prompt_forward_tokens_for_devices_without_a_memory_reading():
    # Shared rows: a = 10 + (3 + 2 + 5) + 2 = 22, b = 20 + (4 + 6) + 1 = 31, c = 5 + 1 = 6; the largest is b's
    assert one_prompt_forward_tokens(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, share_prefix=True) == 31
    plan = plan_forwards(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, 31, share_prefix=True)
    assert plan == [[[0, 2, 3]], [[1, 5]], [[4]]]  # one prompt per forward, not the whole window in one
    # Padded batches of one prompt's rollouts, to the longest completion (6): a = 3 x 16, b = 2 x 26, c = 1 x 26
    assert one_prompt_forward_tokens(KEYS, PROMPT_LENGTHS, COMPLETION_LENGTHS, share_prefix=False) == 52


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("budget", [12, 30, 64, 200])
def test_plan_respects_the_token_budget_and_keeps_every_rollout_once(share_prefix, budget):
    rng = random.Random(budget)
    keys = [rng.choice("abcdef") for _ in range(40)]
    prompt_length = {key: rng.randint(5, 40) for key in "abcdef"}
    prompts = [prompt_length[key] for key in keys]
    completions = [rng.randint(0, 12) for _ in keys]
    forwards = plan_forwards(keys, prompts, completions, budget, share_prefix)
    assert sorted(r for forward in forwards for row in forward for r in row) == list(range(len(keys)))
    width = max(completions)
    for forward in forwards:
        if share_prefix:  # one forward, one packed row of groups, each of one prompt
            assert all(len({keys[r] for r in group}) == 1 for group in forward)
            cost = sum(packed_row_tokens(prompts[group[0]], [completions[r] for r in group]) for group in forward)
            alone = packed_row_tokens(prompts[forward[0][0]], [completions[forward[0][0]]])
        else:
            assert all(len(row) == 1 for row in forward)
            cost = len(forward) * (max(prompts[row[0]] for row in forward) + width)
            alone = prompts[forward[0][0]] + width
        assert cost == forward_tokens(forward, prompts, completions, share_prefix)
        assert cost <= budget or (len(forward) == 1 and len(forward[0]) == 1 and alone > budget)
