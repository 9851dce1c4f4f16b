"""Answer extraction and EM / F1 scoring against cases worked out from the rules of docs/design.md, "Rewards"."""

import pytest

from depo_trl.rewards import (
    REWARD_FUNCTIONS,
    em_reward,
    exact_match_score,
    extract_answer,
    f1_reward,
    f1_score,
    get_reward_funcs,
    normalize_answer,
    reads_answer_column,
)
from depo_trl.user_errors import UsageError

from .helpers import alternating_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Passage 2 says so. Therefore, the answer is Paris.", "Paris"),
        ("Therefore, the answer is **Paris**.", "Paris"),
        ('THE ANSWER IS "Rome"', "Rome"),
        ("the answer is Oslo. Wait, no. Therefore, the answer is Lima.", "Lima"),
        ("The answer is: Kyoto\nThat is all.", "Kyoto"),
        ("<think>the answer is Cairo</think>Therefore, the answer is Quito.", "Quito"),
        ("<think>the answer is Cairo</think>I am not sure.", "I am not sure"),
        ("The total is \\boxed{\\frac{1}{2}} overall", "\\frac{1}{2}"),
        ("Some reasoning.\n\nPerth.\n\n", "Perth"),
        ("", ""),
        ("   \n  ", ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple,  a pear  ", "apple pear"),
        ("Theatre of the Absurd", "theatre of absurd"),  # only whole-word articles go
        ("U.S.A.", "usa"),
        ("Zürich", "zürich"),  # non-ASCII letters stay
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_over_aliases():
    assert exact_match_score("the United States", ["USA", "United States"]) == 1.0
    assert exact_match_score("United States of America", ["USA", "United States"]) == 0.0
    assert exact_match_score("", ["x"]) == 0.0


def test_f1_by_hand():
    # prediction "new york city" vs gold "new york": overlap 2, precision 2/3, recall 1 -> F1 = 0.8
    assert f1_score("New York City", "New York") == pytest.approx(0.8)
    # max over golds: "york" alone scores 2 * (1/3 * 1) / (1/3 + 1) = 0.5 against the first gold
    assert f1_score("New York City", ["York", "new york city"]) == 1.0
    assert f1_score("", ["anything"]) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both normalise to nothing


def test_rewards_read_the_answer_column_for_plain_and_conversational_completions():
    plain = ["Therefore, the answer is Paris.", "Therefore, the answer is Paris Hilton."]
    chat = [[{"role": "assistant", "content": text}] for text in plain]
    answers = [["Paris", "City of Light"], "paris"]
    assert em_reward(plain, answer=answers) == [1.0, 0.0]
    assert em_reward(chat, answer=answers) == [1.0, 0.0]
    assert f1_reward(chat, answer=answers) == pytest.approx([1.0, 2 * 0.5 * 1 / 1.5])


def test_rewards_fail_clearly_on_bad_answers():
    with pytest.raises(ValueError, match="No `answer` column"):
        em_reward(["x"])
    with pytest.raises(ValueError, match="Row 1"):
        f1_reward(["x", "y"], answer=["a", []])


def test_recipes_name_rewards_from_the_registry_or_by_dotted_path():
    assert REWARD_FUNCTIONS == {"em": em_reward, "f1": f1_reward}
    funcs = get_reward_funcs(["f1", "em", "tests.helpers.alternating_reward"])
    assert funcs == [f1_reward, em_reward, alternating_reward]
    assert reads_answer_column(funcs) and not reads_answer_column([alternating_reward])
    with pytest.raises(UsageError, match=r"reward_funcs 'exact_match': unknown reward function; use one of \['em'"):
        get_reward_funcs(["exact_match"])
    with pytest.raises(UsageError, match="'tests.helpers.no_such_reward': unknown reward function"):
        get_reward_funcs(["tests.helpers.no_such_reward"])
    with pytest.raises(UsageError, match="no reward function"):
        get_reward_funcs([])
