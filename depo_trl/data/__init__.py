"""Dataset builders: real multi-hop QA (MuSiQue, HotpotQA, 2WikiMultihopQA) -> DePO short/long prompt pairs."""

from .builder import BuiltContexts, ContextBuilder, length_statistics
from .sources import SOURCES, MalformedRecord, Paragraph, QAExample, SkipRow, adapt, read_records
from .template import format_passages, render_prompt, user_messages


__all__ = [
    "SOURCES",
    "BuiltContexts",
    "ContextBuilder",
    "MalformedRecord",
    "Paragraph",
    "QAExample",
    "SkipRow",
    "adapt",
    "format_passages",
    "length_statistics",
    "read_records",
    "render_prompt",
    "user_messages",
]
