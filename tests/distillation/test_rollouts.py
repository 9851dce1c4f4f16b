"""The rollouts as the long pass sees them (`depo_trl/distillation/rollouts.py`): each long prompt rendered with the
chat template, tokenized once per prompt and shared by its rollouts."""

import copy

from ..helpers import NUM_GENERATIONS, generation_batch, make_trainer


def test_long_prompt_is_rendered_with_the_chat_template(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path)
    batch = generation_batch(trainer, tiny_dataset, num_prompts=1)
    tokenizer = trainer.processing_class
    text = tokenizer.apply_chat_template(tiny_dataset[0]["long_prompt"], tokenize=False, add_generation_prompt=True)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    term = batch["distillation"][0]
    assert all(other is term for other in batch["distillation"])
    for ids in term.rollouts.long_prompt_ids:
        assert ids.tolist() == list(expected)
    assert tokenizer.decode(expected).startswith("<|im_start|> user")
    assert term.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert term.tokens_in_batch.item() == batch["completion_mask"][0::2].sum().item()


def test_each_long_prompt_is_tokenized_once_and_shared_by_its_rollouts(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path)
    tokenized = []
    tokenize = trainer._tokenize_prompts

    def recording(prompts):
        tokenized.append(len(prompts))
        return tokenize(prompts)

    trainer._tokenize_prompts = recording
    trainer.model.train()
    # A copy per rollout, as TRL's dataloader hands out rows: equal prompts, not the same objects
    rows = [copy.deepcopy(row) for row in tiny_dataset.select(range(2)) for _ in range(NUM_GENERATIONS)]
    batch = trainer._generate_and_score_completions(rows)
    rollouts = batch["distillation"][0].rollouts
    assert tokenized == [8, 2]  # TRL's short prompts, one per rollout; the two long prompts once each
    tokenizer = trainer.processing_class
    for index, ids in enumerate(rollouts.long_prompt_ids):
        row = tiny_dataset[index // NUM_GENERATIONS]
        text = tokenizer.apply_chat_template(row["long_prompt"], tokenize=False, add_generation_prompt=True)
        assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len({id(ids) for ids in rollouts.long_prompt_ids}) == 2
    assert len(set(rollouts.prompt_keys)) == 2
