"""The build command (`python -m depo_trl.data.build`, `depo_trl/data/build.py`): a bad input is one clear error,
and DePOTrainer trains on what it writes."""

import json
import os

import pytest
import torch

from depo_trl import DePOConfig, DePOTrainer
from depo_trl.model_utils import load_tokenizer
from depo_trl.rewards import em_reward

from ..helpers import alternating_reward
from . import INPUTS, run_build


def test_bad_input_is_a_clear_error(tmp_path, fixture_model_dir, capsys):
    def error_line(**kwargs) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run_build(tmp_path, fixture_model_dir, **kwargs)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    empty = tmp_path / "none.jsonl"
    empty.write_text(json.dumps({"id": "x", "question": "q", "answerable": False, "answer": "a", "paragraphs": [{}]}))
    assert "no usable row as --source musique (not answerable: 1)" in error_line(input_path=str(empty))
    assert "invalid choice: 'nq'" in error_line(source="nq", input_path=INPUTS["musique"][0])
    tokenizer = load_tokenizer(fixture_model_dir)
    tokenizer.chat_template = None
    no_template_dir = str(tmp_path / "no-template")
    tokenizer.save_pretrained(no_template_dir)
    with pytest.raises(SystemExit):
        run_build(tmp_path, no_template_dir)
    assert f"--tokenizer {no_template_dir}: no chat template" in capsys.readouterr().err


def test_depo_trainer_trains_on_the_built_dataset(tmp_path, fixture_model_dir):
    dataset, _ = run_build(tmp_path, fixture_model_dir)
    args = DePOConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    # A random model earns no exact-match reward, so nothing would train on `em` alone: the alternating reward gives
    # every group correct and wrong rollouts, and `em` still reads the built `answer` column
    trainer = DePOTrainer(
        model=fixture_model_dir,
        reward_funcs=[em_reward, alternating_reward],
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(fixture_model_dir),
    )
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(log["depo/long_prompt_tokens"] > 1000 for log in logs)
    assert all(log["depo/kd_tokens"] > 0 for log in logs)  # the long prompts were distilled into
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(before[name], param)]
    assert unchanged == []


def test_the_build_is_on_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict

    from depo_trl.data import build

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    target = tmp_path / "built"
    build.save_whole(DatasetDict({"train": Dataset.from_list([{"prompt": "p"}])}), {"rows": 1}, str(target))
    rename = events.index(("replace", f"{target}.partial"))
    synced = {path for kind, path in events[:rename] if kind == "fsync"}
    written = {str(path).replace(str(target), f"{target}.partial") for path in target.rglob("*") if path.is_file()}
    assert written and written <= synced  # every file of the build, and its folder, before the rename
    assert f"{target}.partial" in synced and ("fsync", str(tmp_path)) in events[rename:]
