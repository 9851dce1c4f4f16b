"""The shipped warm start of the toy world (`depo_trl/toy/warm_start.py`): made with its recorded settings, and in
DePO's regime (answers from short contexts, much less from long ones), as recorded and as measured again here."""

from dataclasses import asdict

import torch
from transformers import AutoModelForCausalLM

from depo_trl.model_utils import load_tokenizer
from depo_trl.toy.training import ToySettings, evaluate
from depo_trl.toy.warm_start import SHIPPED_WARM_START, WarmStartSettings, read_record
from depo_trl.toy.world import build_toy_tokenizer


def test_the_shipped_warm_start_matches_its_settings_and_is_in_depos_regime():
    record, settings = read_record(SHIPPED_WARM_START), WarmStartSettings()
    assert record["settings"] == asdict(settings)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_WARM_START)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        settings.hidden_size,
        settings.num_layers,
        settings.num_heads,
    )
    tokenizer = load_tokenizer(SHIPPED_WARM_START)
    assert tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()
    # The regime, as recorded on its 200 held-out questions: sampled short-context EM >= 0.75 and >= 2x chance,
    # long-context EM at most half the short-context EM
    recorded = record["evaluation"]
    assert recorded["short_sampled_em"] >= max(0.75, 2 * recorded["short_chance"])
    assert recorded["long_sampled_em"] <= recorded["short_sampled_em"] / 2
    assert recorded["long_em"] <= recorded["short_em"] / 2
    # ... and re-measured here, greedily on the first 100 of them (the recorded figures are not just numbers in a file)
    settings = ToySettings(eval_rows=100)
    rows = settings.eval_set()
    with torch.random.fork_rng(devices=[]):
        measured = evaluate(model, tokenizer, rows, settings, show_progress=False)
    assert measured["short_em"] >= 0.75 and measured["long_em"] <= measured["short_em"] / 2
