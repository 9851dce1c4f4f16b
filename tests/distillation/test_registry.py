"""The registry of the long-context term's variants (`DISTILLATIONS` in `depo_trl/distillation/__init__.py`): what
`DePOConfig.distillation` accepts, what the config checks a variant's settings with, and what the trainer builds."""

import dataclasses

import pytest

from depo_trl import DePOConfig
from depo_trl.distillation import DISTILLATIONS
from depo_trl.user_errors import UsageError

from ..helpers import generation_batch, make_trainer


def config(**kwargs) -> DePOConfig:
    return DePOConfig(output_dir="unused", report_to="none", use_cpu=True, **kwargs)


def test_the_config_accepts_exactly_the_registered_variants_and_none():
    (field,) = [field for field in dataclasses.fields(DePOConfig) if field.name == "distillation"]
    assert field.metadata["choices"] == [*DISTILLATIONS, "none"]  # what `depo-train --distillation` offers
    for name in [*DISTILLATIONS, "none"]:
        assert config(distillation=name).distillation == name
    with pytest.raises(UsageError, match="distillation='ce' is not a DePO configuration"):
        config(distillation="ce")


@pytest.mark.parametrize("name", sorted(DISTILLATIONS))
def test_the_config_checks_its_settings_with_the_registered_class(name, monkeypatch):
    def refuse(cls, args):
        raise UsageError(f"refused by {cls.__name__}")

    monkeypatch.setattr(DISTILLATIONS[name], "check_config", classmethod(refuse))
    with pytest.raises(UsageError, match=f"refused by {DISTILLATIONS[name].__name__}"):
        config(distillation=name)
    config(distillation="none")  # no term, nothing to check


# A setting each variant refuses, and the message that names it
BAD_SETTINGS = {
    "kd": [({"gradient_accumulation_steps": 2, "steps_per_generation": 3}, "must divide the other")],
    "iw": [
        ({"gradient_accumulation_steps": 2, "steps_per_generation": 3}, "must divide the other"),
        ({"loss_type": "cispo"}, "distillation='iw' follows the proxy's token normalisation"),
    ],
}


@pytest.mark.parametrize("name", sorted(DISTILLATIONS))
def test_each_variant_s_check_config_refuses_a_setting_it_cannot_use(name):
    assert set(BAD_SETTINGS) == set(DISTILLATIONS)  # a new variant says what it refuses here
    term = DISTILLATIONS[name]
    term.check_config(config(distillation="none"))  # the defaults pass
    for settings, message in BAD_SETTINGS[name]:
        with pytest.raises(UsageError, match=message):
            term.check_config(config(distillation="none", **settings))  # `none` has no term to refuse them
        with pytest.raises(UsageError, match=message):
            config(distillation=name, **settings)
    # What only DePO-IW refuses, DePO's KD term takes
    DISTILLATIONS["kd"].check_config(config(distillation="none", loss_type="cispo"))


@pytest.mark.parametrize("name", sorted(DISTILLATIONS))
def test_the_trainer_builds_the_registered_term(name, tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, distillation=name)
    batch = generation_batch(trainer, tiny_dataset, num_prompts=1)
    assert {type(term) for term in batch["distillation"]} == {DISTILLATIONS[name]}
    assert batch["distillation"][0].name == name
