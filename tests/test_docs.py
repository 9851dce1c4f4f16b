"""The project's documents: inside the project, and in step with the registries they show."""

import os
import re
import subprocess

import pytest

from depo_trl.arms import arms_table

from .helpers import ROOT


def tracked_text_files() -> list[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = (".py", ".md", ".yaml", ".cfg", ".toml", ".ipynb", ".slurm", ".sh", "Makefile")
    return [name for name in files if name.endswith(suffixes) and os.path.isfile(os.path.join(ROOT, name))]


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


# A document named with the sections meant: `docs/design.md, "The method" and "The long-context pass"`,
# `README "Will it fit?"`, or a Markdown link `docs/hub.md#what-is-uploaded`
SECTION_REFERENCE = re.compile(
    r'(?<![\w/.-])(README(?:\.md)?|docs/[\w./-]+\.md),?\s+("[^"\n]+"(?:,?\s+(?:and|or)\s+"[^"\n]+")*)'
)
ANCHOR_REFERENCE = re.compile(r"(?<![\w/.-])(README\.md|docs/[\w./-]+\.md)#([\w-]+)")


def headings(document: str) -> set[str]:
    """The titles of a Markdown document's headings (outside code blocks)."""
    titles, in_code = set(), False
    for line in read(document).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            titles.add(line.lstrip("#").strip())
    return titles


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def section_references(text: str) -> list[tuple[str, str]]:
    """(document, section title) of every reference to a section in `text`; `README` is the repository's."""
    references = []
    for document, titles in SECTION_REFERENCE.findall(text):
        document = "README.md" if document.startswith("README") else document
        references += [(document, title) for title in re.findall(r'"([^"]+)"', titles)]
    return references


@pytest.mark.parametrize("document", ["README.md", "recipes/README.md", "docs/design.md", "docs/trainer.md"])
def test_documents_show_the_arms_registry(document):
    assert arms_table() in read(document)


def test_references_to_documents_point_inside_the_project():
    for name in tracked_text_files():
        if name == "tests/test_docs.py":  # names the old document in order to look for it
            continue
        text = read(name)
        assert "DESIGN.md" not in text, name
        for reference in re.findall(r"\b(docs/[\w./-]+\.md)", text):
            assert os.path.isfile(os.path.join(ROOT, reference)), (name, reference)


def test_references_to_sections_name_headings_of_their_document():
    """`(docs/design.md, "Rewards")` in a docstring is a promise that the section exists: renaming or removing a
    heading breaks it here, not for the reader who looks for it."""
    checked = 0
    for name in tracked_text_files():
        if name == "tests/test_docs.py":  # its examples are not references
            continue
        text = read(name)
        for document, title in section_references(text):
            assert title in headings(document), f'{name}: {document} has no heading "{title}"'
            checked += 1
        for document, fragment in ANCHOR_REFERENCE.findall(text):
            assert fragment in {anchor(title) for title in headings(document)}, f"{name}: {document}#{fragment}"
            checked += 1
    assert checked >= 20  # the pattern still finds the references the project makes


def test_a_reference_to_a_missing_section_is_found():
    text = 'See docs/design.md, "The method" and "No such section"; README "Will it fit?"; README.md#install.'
    text += ' Not the root README: recipes/README.md, "Batch sizes".'
    assert section_references(text) == [
        ("docs/design.md", "The method"),
        ("docs/design.md", "No such section"),
        ("README.md", "Will it fit?"),
    ]
    assert "No such section" not in headings("docs/design.md") and "The method" in headings("docs/design.md")
    assert ANCHOR_REFERENCE.findall(text) == [("README.md", "install")]
    assert (
        anchor("Will it fit?") == "will-it-fit"
        and anchor("The `depo-train` command line") == "the-depo-train-command-line"
    )
