"""The registry of the long-context term's variants (`DISTILLATIONS` in `depo_trl/distillation/__init__.py`)."""

from depo_trl.distillation import DISTILLATIONS, Distillation


def test_every_variant_is_a_registered_distillation():
    assert set(DISTILLATIONS) == {"kd", "iw"}
    assert all(issubclass(term, Distillation) and DISTILLATIONS[term.name] is term for term in DISTILLATIONS.values())
