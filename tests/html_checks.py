"""Test helper: parse an HTML file strictly enough to catch broken markup, and list what it references."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key] or "")
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else '-'}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_html(path: Path) -> _Checker:
    """Parse ``path``; assert balanced tags, unique ids, and that every local src/href exists.

    Returns the parser (``refs``, ``ids``, ``tags``, ``text``) for further checks.
    """
    parser = _Checker()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids"
    for ref in parser.refs:
        url = urlparse(ref)
        if url.scheme == "data" or url.scheme in ("http", "https"):
            continue
        if ref.startswith("#"):
            assert ref[1:] in parser.ids, f"anchor {ref} missing"
            continue
        assert not url.scheme and not ref.startswith("/"), f"absolute reference {ref} (the folder must be movable)"
        target = path.parent / unquote(url.path)
        assert target.is_file(), f"{ref} -> {target} missing"
    return parser
