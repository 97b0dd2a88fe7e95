"""Decoded views of a line, so a secret hidden by an encoding is found and hidden in the original.

A secret may reach a log URL-encoded (`%26sig%3D...`), inside a JSON string inside a JSON string
(`{\\"password\\": \\"...\\"}`) or XML-escaped (`&quot;`). A view is the line with those escapes
undone, plus, for every character of the view, the offset in the line it came from, so a secret
found in the view maps back to the exact bytes to replace (a partial redaction leaves no byte).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote

#: A view: the decoded text and, per character plus one past the end, its offset in the line.
View = tuple[str, list[int]]

_PERCENT: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_JSON_ESCAPE: Final = re.compile(r"\\[\\\"/'nrt]|\\u[0-9A-Fa-f]{4}")
#: An XML tag becomes one space: rules end a secret at a quote, space or `;`, never at `<`.
_XML_TAG: Final = re.compile(r"</?[A-Za-z_][^<>\n]*>")
_XML_ENTITY: Final = re.compile(r"&(?:quot|apos|amp|lt|gt|#[0-9]{1,6}|#x[0-9A-Fa-f]{1,5});")
_JSON_SIMPLE: Final = {"n": " ", "r": " ", "t": " "}  # a line is one line: keep escaped breaks as spaces
_XML: Final = {"quot": '"', "apos": "'", "amp": "&", "lt": "<", "gt": ">"}


def _unjson(m: re.Match[str]) -> str:
    s = m.group()
    if s[1] == "u":
        c = chr(int(s[2:], 16))
        return c if c.isprintable() else " "
    return _JSON_SIMPLE.get(s[1], s[1])


def _unxml(m: re.Match[str]) -> str:
    name = m.group()[1:-1]
    if name.startswith("#"):
        code = int(name[2:], 16) if name[1:2] == "x" else int(name[1:])
        c = chr(code) if code < 0x110000 else " "
        return c if c.isprintable() else " "
    return _XML[name]


def _unpercent(m: re.Match[str]) -> str:
    c = unquote(m.group(), errors="replace")
    return c if c.isprintable() else " "


def _decode(view: View, pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str]) -> View | None:
    """`view` with `pattern`'s escapes replaced, offsets carried through; None when none occur."""
    text, origin = view
    out: list[str] = []
    where: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        out.append(text[pos:m.start()])
        where += origin[pos:m.start()]
        r = repl(m)
        out.append(r)
        where += [origin[m.start()]] * len(r)
        pos = m.end()
    if pos == 0:
        return None
    out.append(text[pos:])
    where += origin[pos:]  # includes the one-past-the-end entry
    return "".join(out), where


#: (a substring the line must hold for the decoder to be worth running, its pattern, its replacement)
_DECODERS: Final[tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]], ...]] = (
    ("%", _PERCENT, _unpercent),
    ("\\", _JSON_ESCAPE, _unjson),
    ("\\", _JSON_ESCAPE, _unjson),  # JSON in a JSON string in a JSON string
    ("<", _XML_TAG, lambda m: " "),
    ("&", _XML_ENTITY, _unxml),
)


def decoded_views(text: str) -> list[View]:
    """The line with each kind of escape undone in turn (each view builds on the previous one);
    when it holds a `%`, also without URL-decoding (a `%` may be part of a secret, not an escape)."""
    views = _chain(text, _DECODERS)
    if "%" in text:
        views += _chain(text, _DECODERS[1:])
    return views


def _chain(text: str, decoders: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str]], ...]) -> list[View]:
    views: list[View] = []
    view: View = (text, list(range(len(text) + 1)))
    for needle, pattern, repl in decoders:
        if needle in view[0]:
            decoded = _decode(view, pattern, repl)
            if decoded is not None:
                view = decoded
                views.append(view)
    return views


def to_line(origin: list[int], start: int, end: int) -> tuple[int, int]:
    """A view's span [start, end) as a span of the line: every byte any of its characters came from."""
    return origin[start], origin[end]
