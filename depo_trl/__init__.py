"""depo_trl: DePO (Decomposed Policy Optimization) for long-context reasoning, on Hugging Face TRL."""

from .arms import ARMS, Arm, arm_for
from .config import DePOConfig
from .trainer import DePOTrainer


__version__ = "0.1.0.dev0"

__all__ = ["ARMS", "Arm", "DePOConfig", "DePOTrainer", "arm_for"]
