"""The prompt DePO trains and is evaluated on (shown whole in docs/design.md, "Data"): the one place its words are
written, and the one function that renders it. The builder, the evaluation tasks and the tests all use it."""

from collections.abc import Sequence

from .sources import Paragraph


INSTRUCTION = "Please read the following text and answer the question below."
ANSWER_FORMAT = 'Format your response as follows: "Therefore, the answer is (insert answer here)".'
# The frame one passage adds to its title and text ("Passage N:" and the blank line after it), N up to 999
PASSAGE_FRAME = "Passage 999:\n{title}\n{text}\n\n"


def format_passages(paragraphs: Sequence[Paragraph]) -> str:
    """`Passage 1:\\n{title}\\n{text}`, blocks separated by a blank line."""
    return "\n\n".join(f"Passage {i}:\n{p.title}\n{p.text}" for i, p in enumerate(paragraphs, start=1))


def render_prompt(context: str, question: str) -> str:
    """The user message: the instruction, `context` (passages from [`format_passages`], or a benchmark's own text)
    between `<text>` tags, the question, and the answer format the EM/F1 rewards extract from."""
    return f"{INSTRUCTION}\n\n<text>\n{context}\n</text>\n\nQuestion: {question}\n\n{ANSWER_FORMAT}"


def user_messages(content: str) -> list[dict[str, str]]:
    """A one-turn conversation, the format of the `prompt` and `long_prompt` columns."""
    return [{"role": "user", "content": content}]
