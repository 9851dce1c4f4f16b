"""`tasks/frames.py`: FRAMES's loader on a fixture in its format, its prompt, and F1 by hand."""

import pytest

from depo_trl.evaluation.tasks import TASKS
from depo_trl.evaluation.tasks.frames import load_frames
from depo_trl.user_errors import UsageError

from .. import FIXTURES


@pytest.mark.parametrize(
    ("raw", "gold", "prompt_style", "pred", "f1"),
    [
        ("Kesh lies on it. Therefore, the answer is The Pellan Sea.", "The Pellan Sea", "depo", "The Pellan Sea", 100),
        # "pellan sea coast" vs "pellan sea": precision 2/3, recall 1 -> F1 0.8
        ("Therefore, the answer is the Pellan Sea coast", "The Pellan Sea", "depo", "the Pellan Sea coast", 80),
        # Frames keeps QwenLong-L1's prompt under --prompt-style longbench, so its answer is still extracted; "38
        # years" vs "38": precision 1/2, recall 1 -> F1 2/3, which QwenLong-L1 rounds to 0.67
        ("It flows on.\nTherefore, the answer is 38 years.", "38", "longbench", "38 years", (66.67, 67.0)),
        ("Therefore, the answer is the Baltic Sea.", "The Pellan Sea", "depo", "the Baltic Sea", 50),
    ],
)
def test_frames_f1_by_hand(raw, gold, prompt_style, pred, f1):
    lenient_f1, official_f1 = f1 if isinstance(f1, tuple) else (f1, f1)
    for mode, expected in (("lenient", lenient_f1), ("official", official_f1)):  # one line after the marker
        score = TASKS["frames"].score(mode, raw, [gold], prompt_style)
        assert score.pred == pred
        assert score.metrics["f1"] == pytest.approx(expected, abs=0.005)


def test_frames_loader(tmp_path):
    frames = load_frames(FIXTURES)
    assert [e.answers for e in frames] == [["The Pellan Sea"], ["38"]]
    assert frames[0].context.startswith("Velmar Observatory\nVelmar Observatory is") and "\nOstrava River\n" in (
        frames[0].context
    )
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: no frames.jsonl there.*depo_trl.evaluation.frames"):
        load_frames(str(tmp_path))


def test_frames_prompt_and_budget():
    frames = load_frames(FIXTURES)[0]
    for style in ("depo", "longbench"):  # QwenLong-L1's words, as DocMath's
        assert TASKS["frames"].prompt(frames, style) == TASKS["docmath"].prompt(frames, style)
        assert TASKS["frames"].max_new_tokens(style) == 1024
    assert TASKS["frames"].decoding.as_record() == {"do_sample": False}
