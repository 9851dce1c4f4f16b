"""Mini-batches of whole prompt groups (`depo_trl/prompt_groups.py`)."""

import torch
from datasets import Dataset

from depo_trl.prompt_groups import PROMPT_GROUP, prompt_groups, shuffle_whole_groups

from .helpers import NUM_GENERATIONS, make_rows, make_trainer


def test_consecutive_rollouts_of_one_prompt_are_a_group():
    assert prompt_groups(["a", "a", "b", "b", "b", "a"]).tolist() == [0, 0, 1, 1, 1, 2]


def test_the_shuffle_permutes_groups_and_keeps_each_one_together():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    batch = {PROMPT_GROUP: groups, "rollout": torch.arange(12), "text": [f"r{i}" for i in range(12)], "n": None}
    torch.manual_seed(0)
    shuffled = shuffle_whole_groups(batch)
    order = shuffled[PROMPT_GROUP].tolist()
    assert sorted(shuffled["rollout"].tolist()) == list(range(12)) and shuffled["n"] is None
    assert shuffled["text"] == [f"r{i}" for i in shuffled["rollout"].tolist()]
    assert all(len(set(order[start : start + 3])) == 1 for start in range(0, 12, 3))
    assert order != groups.tolist()  # seed 0 moves the groups
    torch.manual_seed(0)
    assert shuffle_whole_groups(batch)[PROMPT_GROUP].tolist() == order  # the torch generator decides, as in TRL


def micro_batch_prompts(trainer, dataset) -> list[set[str]]:
    """The prompts of each micro-batch TRL cuts from one generation batch."""
    trainer.model.train()
    trainer._step, trainer._buffered_inputs = 0, None
    rows = [row for row in dataset for _ in range(NUM_GENERATIONS)]
    trainer._prepare_inputs(rows)
    return [
        set(batch["rollout_index"].div(NUM_GENERATIONS, rounding_mode="floor").tolist())
        for batch in trainer._buffered_inputs
    ]


def test_an_optimizer_step_of_a_gspo_like_recipe_holds_whole_prompts(tiny_model_dir, tmp_path):
    # Four prompts per generation, one optimizer step per prompt's worth of rollouts (steps_per_generation 4, GA 1)
    dataset = Dataset.from_list(make_rows(num_rows=4))
    settings = {
        "per_device_train_batch_size": NUM_GENERATIONS,
        "steps_per_generation": 4,
        "gradient_accumulation_steps": 1,
    }
    torch.manual_seed(0)
    grouped = make_trainer(tiny_model_dir, dataset, tmp_path, **settings)
    assert [len(prompts) for prompts in micro_batch_prompts(grouped, dataset)] == [1, 1, 1, 1]
    torch.manual_seed(0)
    scattered = make_trainer(tiny_model_dir, dataset, tmp_path, shuffle_prompt_groups=False, **settings)
    assert max(len(prompts) for prompts in micro_batch_prompts(scattered, dataset)) > 1  # TRL's shuffle mixes them
