"""Tests of `depo_trl/distillation/`: `test_<module>.py` for each variant's module (`kd.py`, `iw.py`, `rollouts.py`),
`test_registry.py` for `DISTILLATIONS`, and `long_pass/` for the long pass."""
