"""Layer checkpointing around the long pass (`depo_trl/distillation/long_pass/checkpointing.py`): turned off for a
pass that holds its forwards, and restored after it, even on an error."""

import pytest
from transformers import Qwen2Config, Qwen2ForCausalLM

from depo_trl.distillation.long_pass import uses_layer_checkpointing
from depo_trl.distillation.long_pass.checkpointing import without_layer_checkpointing


def test_layer_checkpointing_is_turned_off_for_the_pass_and_restored_after_it_even_on_error():
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.activation_checkpointing_enable(every_n_layers=2)  # as `activation_checkpointing_kwargs` asks train() to
    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    assert flags == [True, False, True, False]
    # Only some layers keep just their input: the memory model must count the model as not checkpointed
    assert not uses_layer_checkpointing(model)
    with pytest.raises(RuntimeError, match="out of memory"):
        with without_layer_checkpointing(model):
            assert not any(layer.gradient_checkpointing for layer in model.model.layers)
            raise RuntimeError("out of memory")
    assert [layer.gradient_checkpointing for layer in model.model.layers] == flags
    model.activation_checkpointing_enable()
    assert uses_layer_checkpointing(model)
    with without_layer_checkpointing(model):
        assert not uses_layer_checkpointing(model)
    assert uses_layer_checkpointing(model) and model.model.gradient_checkpointing
