"""depo_trl: DePO (Decomposed Policy Optimization) for long-context reasoning, on Hugging Face TRL."""

from .config import VALID_COMBINATIONS, DePOConfig
from .trainer import DePOTrainer


__version__ = "0.1.0.dev0"

__all__ = ["VALID_COMBINATIONS", "DePOConfig", "DePOTrainer"]
