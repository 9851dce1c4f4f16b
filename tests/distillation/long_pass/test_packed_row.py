"""A packed row (`depo_trl/distillation/long_pass/packed_row.py`): each prompt once, its rollouts after it, with the
positions, labels and layout the shared-prefix attention reads; and the refusal of a model that ignores the layout."""

import pytest
import torch

from depo_trl.distillation.long_pass import SHARED_PREFIX_KWARG, pack_row

from ...helpers import accumulated_gradients, generation_batch, make_trainer


def test_shared_row_by_hand():
    first = (torch.tensor([7, 8, 9]), [(0, torch.tensor([1, 2])), (3, torch.tensor([5]))])
    second = (torch.tensor([6, 4]), [(1, torch.tensor([8]))])
    row = pack_row([first, second])
    # [7, 8 | 9, 1, 2 | 9, 5 || 6 | 4, 8]: the last prompt token opens each segment, whose positions continue its
    # prompt's prefix; the second prompt's positions start again at 0
    assert row.input_ids.tolist() == [[7, 8, 9, 1, 2, 9, 5, 6, 4, 8]]
    assert row.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3, 0, 1, 2]]
    assert row.labels.tolist() == [[-100, -100, -100, 1, 2, -100, 5, -100, -100, 8]]
    first_group, second_group = row.layout.groups
    assert (first_group.start, first_group.prefix_length) == (0, 2)
    assert first_group.segment_index.tolist() == [[2, 3, 4], [5, 6, 6]]
    assert first_group.valid_index.tolist() == [0, 1, 2, 3, 4]  # of the flattened (2 x 3) grid: not the padding
    assert (second_group.start, second_group.prefix_length) == (7, 1)
    assert second_group.segment_index.tolist() == [[8, 9]]
    scored = list(zip(row.rollout.tolist(), row.token.tolist(), row.position.tolist()))
    assert scored == [(0, 0, 3), (0, 1, 4), (3, 0, 6), (1, 0, 9)]


def test_shared_row_is_built_on_the_device_of_its_inputs():
    """Completions live on the accelerator in training: the row is packed there, with no host tensor mixed in
    (the meta device stands in for a GPU)."""
    prompt = torch.arange(100, 109, device="meta")
    row = pack_row([(prompt, [(0, torch.arange(4, device="meta")), (1, torch.arange(2, device="meta"))])])
    for tensor in (row.input_ids, row.position_ids, row.labels, row.position, row.layout.groups[0].segment_index):
        assert tensor.device.type == "meta"
    assert row.input_ids.shape == (1, 8 + 5 + 3)
    assert row.rollout.device.type == "cpu" and row.token.device.type == "cpu"  # bookkeeping stays on the host


def test_a_model_whose_attention_ignores_the_packed_layout_is_refused(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, per_device_train_batch_size=8)
    attention = trainer.model.model.layers[1].self_attn
    forward = attention.forward

    def own_attention(*args, **kwargs):  # as a model with its own attention code: the layout never reaches it
        kwargs.pop(SHARED_PREFIX_KWARG, None)
        return forward(*args, **kwargs)

    attention.forward = own_attention
    batch = generation_batch(trainer, tiny_dataset, num_prompts=2)
    with pytest.raises(RuntimeError, match="1 of the model's 2 attention layers computed the packed"):
        accumulated_gradients(trainer, [batch])


def test_mllama_whose_cross_attention_layers_a_text_forward_skips_computes_a_packed_row_exactly():
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    from trl.trainer.utils import add_fused_lm_head

    from depo_trl.distillation.long_pass import install_shared_prefix_attention, packed_row_log_probs
    from depo_trl.distillation.long_pass.packed_row import self_attention_layers

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_global_layers": 1,
        "attention_heads": 4,
        "image_size": 28,
        "patch_size": 14,
        "max_num_tiles": 4,
        "vision_output_dim": 64,
        "intermediate_layers_indices": [0],
    }
    text = {
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "cross_attention_layers": [1],
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=99)  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    add_fused_lm_head(model, temperature=1.0)
    assert install_shared_prefix_attention("sdpa") and self_attention_layers(config) == 3
    prompt, completions = torch.randint(3, 90, (20,)), [torch.randint(3, 90, (5,)), torch.randint(3, 90, (4,))]
    row = pack_row([(prompt, list(enumerate(completions)))])
    packed = packed_row_log_probs(model, row, self_attention_layers(config))  # the three self-attention layers ran it
    for rollout, completion in enumerate(completions):
        ids = torch.cat([prompt, completion]).unsqueeze(0)
        labels = ids.masked_fill(torch.arange(ids.size(1)) < len(prompt), -100)
        naive = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs[0, len(prompt) - 1 :]
        torch.testing.assert_close(packed[0, row.position[row.rollout == rollout] - 1], naive, rtol=1e-5, atol=1e-5)
