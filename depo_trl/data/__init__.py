"""Dataset builders: real multi-hop QA (MuSiQue, HotpotQA, 2WikiMultihopQA) -> DePO short/long prompt pairs."""

from .builder import ContextBuilder, format_passages, length_statistics, render_prompt
from .sources import SOURCES, Paragraph, QAExample, SkipRow, adapt, read_records


__all__ = [
    "SOURCES",
    "ContextBuilder",
    "Paragraph",
    "QAExample",
    "SkipRow",
    "adapt",
    "format_passages",
    "length_statistics",
    "read_records",
    "render_prompt",
]
