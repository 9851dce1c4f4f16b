"""The tests mirror the package: `tests/<folder>/test_<module>.py` tests `depo_trl/<folder>/<module>.py` (e.g.
`distillation/long_pass/test_plan.py` for `depo_trl/distillation/long_pass/plan.py`, `test_trainer.py` for
`depo_trl/trainer.py`, `scripts/test_depo.py` for the `depo-train` entry point), and `test_registry.py` a registry kept
in a package's `__init__.py`. Beside them: `test_recipes.py` and `test_docs.py` check the `recipes/` and `docs/`
folders, and `docs/` runs or parses every command block of the documents
(docs/development.md, "Documents that are tests"); `integration/` holds the tests of the whole stack (several
processes, DeepSpeed, real models, a fresh install, the GPU check's dry run), `helpers.py` and `conftest.py` the tiny
model, rows and trainer every folder shares, and
`fixtures/` the data files (see its SOURCES.md).

`make test-fast` (`pytest -m "not slow"`) is the everyday loop; `make test` runs everything.
"""
