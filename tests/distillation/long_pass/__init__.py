"""Tests of `depo_trl/distillation/long_pass/`, one file per module; `test_memory_prediction.py` measures the memory
model against the pass on a CPU (`benchmarks/long_pass_memory.py`)."""
