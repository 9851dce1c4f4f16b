"""The project's documents: inside the project, and in step with the registries they show."""

import os
import re
import subprocess

import pytest

from depo_trl.arms import arms_table


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_text_files() -> list[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = (".py", ".md", ".yaml", ".cfg", ".toml", ".ipynb", ".slurm", "Makefile")
    return [name for name in files if name.endswith(suffixes)]


@pytest.mark.parametrize("document", ["README.md", "recipes/README.md", "docs/design.md"])
def test_documents_show_the_arms_registry(document):
    with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
        assert arms_table() in handle.read()


def test_references_to_documents_point_inside_the_project():
    for name in tracked_text_files():
        if name == "tests/test_docs.py":  # names the old document in order to look for it
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
            text = handle.read()
        assert "DESIGN.md" not in text, name
        for reference in re.findall(r"\b(docs/[\w./-]+\.md)", text):
            assert os.path.isfile(os.path.join(ROOT, reference)), (name, reference)
