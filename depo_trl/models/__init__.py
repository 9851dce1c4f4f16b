"""Real models that install from the package registry, converted to regular transformers checkpoints."""

import os


# The folder name each converter writes by default, and the command that writes it
CONVERTERS = {"smollm2-135m-instruct": "python -m depo_trl.models.smollm2"}


def conversion_hint(path: str) -> str:
    """How to create the model folder `path` when a converter here writes it, else an empty string."""
    command = CONVERTERS.get(os.path.basename(os.path.normpath(path)))
    return f"; write it with `{command} --output-dir {path}`" if command else ""
