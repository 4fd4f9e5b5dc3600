"""The one way tests read the documentation (README.md and docs/*.md).

``read_doc("plugins")`` is docs/plugins.md, ``read_doc("README")`` the README.
``code_blocks(doc, lang)`` gives its fenced code blocks, each with the reason of the
``<!-- not run: reason -->`` comment written right before it, if there is one
(tests/test_docs_snippets.py runs every other block of the deploying and configuration
docs)."""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<why>.+?)\s*-->\s*$")


def doc_path(name: str) -> Path:
    """``"README"`` or a file name under docs/ (``"plugins"`` or ``"plugins.md"``)."""
    if name in ("README", "README.md"):
        return ROOT / "README.md"
    return DOCS / (name if name.endswith(".md") else f"{name}.md")


def read_doc(name: str) -> str:
    return doc_path(name).read_text(encoding="utf-8")


def doc_names() -> list[str]:
    """Every document: the README and docs/*.md."""
    return ["README", *sorted(p.stem for p in DOCS.glob("*.md"))]


@dataclass(frozen=True)
class Block:
    doc: str
    lang: str
    code: str
    line: int                  # 1-based line of the opening fence
    not_run: str | None        # the reason given in <!-- not run: ... -->, or None

    @property
    def id(self) -> str:
        return f"{self.doc}.md:{self.line}:{self.lang or 'text'}"


def code_blocks(doc: str, lang: str | None = None) -> list[Block]:
    """The fenced code blocks of ``doc`` in order (those of language ``lang`` if given;
    ``"sh"`` also matches ``bash`` and ``shell``). Blocks indented in a list item are
    dedented."""
    langs = {"sh", "bash", "shell"} if lang in ("sh", "bash", "shell") else {lang}
    lines = read_doc(doc).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, block_lang = i, m["indent"], m["lang"]
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _NOT_RUN.match(lines[prev]) if prev >= 0 else None
        code = textwrap.dedent("\n".join(body)) if indent else "\n".join(body)
        if lang is None or block_lang in langs:
            blocks.append(Block(doc, block_lang, code + "\n", start + 1,
                                marker["why"] if marker else None))
    return blocks


def section(doc: str, heading: str) -> str:
    """The text under the first heading that starts with ``heading`` (without the #s),
    up to the next heading of the same or a higher level."""
    text = read_doc(doc)
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.M)
    assert m, f"no heading {heading!r} in {doc}"
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{len(m[1])}}} ", rest, re.M)
    return rest[:end.start()] if end else rest
