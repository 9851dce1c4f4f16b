"""Tests of `depo_trl/evaluation/`, one file per module: `test_<module>.py` for `depo_trl/evaluation/<module>.py`, and
`tasks/test_<module>.py` for `depo_trl/evaluation/tasks/<module>.py` (`tasks/test_registry.py` for the registry in its
`__init__.py`). The benchmark fixtures are in `tests/fixtures/` (see its SOURCES.md)."""

import os


FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
