"""The toy world's warm start: a tiny Qwen2 trained from scratch on short contexts until it answers them well.

    make toy-warm-start     # python -m depo_trl.toy.warm_start --output-dir depo_trl/toy/shipped_warm_start

Supervised fine-tuning (TRL's `SFTTrainer`) on the toy world's reasoning chains, with 0 to 4 distractor documents
per row. A from-scratch model of this size stays at chance (it learns to name some city of the context, not the
subject's) until, after about a thousand steps at a high learning rate, it learns to copy the name that follows the
subject; the run takes about 20 minutes on 2 CPU cores, longer than the demo can afford, so its result ships with the
package (2.7 MB), with the settings that made it and the figures it reached in `warm_start.json`. A test checks that
the shipped model matches those settings and is in DePO's regime: good on short contexts, poor on long ones.
"""

import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from ..models.tiny import build_tiny_qwen2, save_model_and_tokenizer
from ..user_errors import ArgumentParser, reports_usage_errors, writable_folder
from .training import ToySettings, evaluate_model
from .world import build_toy_tokenizer, warm_start_rows


SHIPPED_WARM_START = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped_warm_start")
RECORD_FILE = "warm_start.json"


@dataclass(frozen=True)
class WarmStartSettings:
    """Everything that makes the warm start; recorded beside it."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    steps: int = 5000
    batch_size: int = 32
    learning_rate: float = 1e-3
    # Warmup, a constant rate while the copy is learnt (the breakthrough came near step 1,000 at a constant 1e-3 in
    # trials, and not at all under a cosine decay from step 0), then a cosine decay over the last `decay_steps`
    lr_scheduler_type: str = "warmup_stable_decay"
    warmup_steps: int = 30
    decay_steps: int = 2000
    max_distractors: int = 4
    max_position_embeddings: int = 1024
    seed: int = 3000


def train_warm_start(output_dir: str, settings: WarmStartSettings, show_progress: bool = True) -> dict:
    """SFT a fresh tiny model on short-context reasoning chains, save it with its tokenizer to `output_dir`, and
    record the settings, the wall time and the held-out EM it reaches in `output_dir/warm_start.json`."""
    started = time.perf_counter()
    tokenizer = build_toy_tokenizer()
    model = build_tiny_qwen2(
        tokenizer,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.max_position_embeddings,
        seed=settings.seed,
    )
    rows = warm_start_rows(settings.steps * settings.batch_size, settings.seed, settings.max_distractors)
    args = SFTConfig(
        output_dir=output_dir,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        lr_scheduler_kwargs={"num_decay_steps": settings.decay_steps, "decay_type": "cosine"},
        warmup_steps=settings.warmup_steps,
        weight_decay=0.0,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        disable_tqdm=not show_progress,
        seed=settings.seed,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    save_model_and_tokenizer(trainer.model, tokenizer, output_dir)
    record = {
        "settings": asdict(settings),
        "train_seconds": round(time.perf_counter() - started),
        "threads": torch.get_num_threads(),
        "evaluation": evaluate_model(trainer.model, tokenizer, ToySettings(), show_progress),
    }
    with open(os.path.join(output_dir, RECORD_FILE), "w") as handle:
        json.dump(record, handle, indent=2)
    return record


def read_record(folder: str) -> dict:
    with open(os.path.join(folder, RECORD_FILE)) as handle:
        return json.load(handle)


@reports_usage_errors("python -m depo_trl.toy.warm_start")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.toy.warm_start", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=SHIPPED_WARM_START)
    args = parser.parse_args(argv)
    writable_folder("--output-dir", args.output_dir)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    record = train_warm_start(args.output_dir, WarmStartSettings())
    print(json.dumps(record, indent=2))
    print(f"Wrote the warm start to {args.output_dir}.")


if __name__ == "__main__":
    main()
