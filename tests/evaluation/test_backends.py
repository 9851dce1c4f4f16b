"""`backends.py`: the hf backend's sampling is seeded, its greedy decoding repeatable."""

from depo_trl.evaluation.backends import HFBackend
from depo_trl.evaluation.tasks import Decoding
from depo_trl.model_utils import load_tokenizer


def test_sampling_is_seeded_on_the_hf_backend(eval_model_dir):
    backend = HFBackend(eval_model_dir, load_tokenizer(eval_model_dir), batch_size=2)
    conversations = [[{"role": "user", "content": f"Question: {word} ?"}] for word in ("storm", "ships", "roof")]
    sampled = [backend.generate(conversations, 6, "test", Decoding(temperature=1.0, seed=3)) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert backend.generate(conversations, 6, "test") == backend.generate(conversations, 6, "test")  # greedy
