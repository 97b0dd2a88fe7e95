"""The maintained secret rule set (gitleaks' rules, generated into shipper/gitleaks_rules.py) as spans.

Each rule has keywords; a line is tried only against the rules whose keywords it holds (lowercased),
found with one Aho-Corasick scan, so 200 rules cost a line a few rule matches at most. A match is
kept the way gitleaks keeps it: its secret (the first non-empty group, else the whole match) must
reach the rule's entropy and pass the rule's and the global allowlists. Regexes compile on first use.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Final
from urllib.parse import quote

from ahocorasick_rs import AhoCorasick, BytesAhoCorasick, Implementation, MatchKind

from shipper import gitleaks_rules as data

#: (start, end, kind) of a secret in a line.
Span = tuple[int, int, str]


def entropy(s: str) -> float:
    """Shannon entropy in bits per character, as gitleaks computes it."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def _compile_all(sources: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(s, re.ASCII) for s in sources)


def _any(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(p.search(text) is not None for p in patterns)


@dataclass(frozen=True)
class Rule:
    """One generated rule: see shipper/gitleaks_rules.py for the fields."""

    id: str
    source: str
    keywords: tuple[str, ...]
    min_entropy: float
    allow_secret: tuple[str, ...]
    allow_match: tuple[str, ...]
    allow_line: tuple[str, ...]
    stopwords: tuple[str, ...]

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The rule's regex, less a leading lazy identifier prefix (`[\\w.-]{0,50}?`): searching
        with it tries up to 50 characters at every position, ten times the cost; `whole_match`
        puts the prefix back where an allowlist looks at the whole match."""
        flags, rest = ("(?i)", self.source[4:]) if self.source.startswith("(?i)") else ("", self.source)
        return re.compile(flags + rest.removeprefix(_LAZY_PREFIX), re.ASCII)

    @cached_property
    def _prefixed(self) -> bool:
        return self.source.removeprefix("(?i)").startswith(_LAZY_PREFIX)

    def whole_match(self, text: str, m: re.Match[str]) -> str:
        """The match as the rule's own regex would have it (with the identifier before it)."""
        start = m.start()
        if self._prefixed:
            stop = max(0, start - 50)
            while start > stop and (text[start - 1].isalnum() or text[start - 1] in "_.-") and text[start - 1].isascii():
                start -= 1
        return text[start:m.end()]

    @cached_property
    def _allow(self) -> tuple[tuple[re.Pattern[str], ...], ...]:
        return _compile_all(self.allow_secret), _compile_all(self.allow_match), _compile_all(self.allow_line)

    def allowed(self, secret: str, match: str, line: str) -> bool:
        """True when an allowlist exempts this finding (as gitleaks: any regex or stopword)."""
        on_secret, on_match, on_line = self._allow
        low = secret.lower()
        return (
            _any(on_secret, secret) or _any(on_match, match) or _any(on_line, line) or any(w in low for w in self.stopwords)
        )


_LAZY_PREFIX: Final = r"[\w.-]{0,50}?"
RULES: Final = tuple(Rule(*r) for r in data.RULES)
_GLOBAL_ALLOW: Final = _compile_all(data.GLOBAL_ALLOW)
_GLOBAL_STOPWORDS: Final = data.GLOBAL_STOPWORDS
#: Every rule keyword, lowercase: the shipper's prefilter includes them all.
KEYWORDS: Final = tuple(sorted({k for r in RULES for k in r.keywords}))
_RULES_OF: Final = {k: tuple(i for i, r in enumerate(RULES) if k in r.keywords) for k in KEYWORDS}
#: Leftmost-longest, so the keywords inside a found one are added from _CONTAINED, and a rescan
#: from one past each hit finds the ones overlapping it.
_SCAN: Final = AhoCorasick(list(KEYWORDS), matchkind=MatchKind.LeftmostLongest)
_LONGEST: Final = max(map(len, KEYWORDS))
_CONTAINED: Final = {k: tuple(o for o in KEYWORDS if o in k) for k in KEYWORDS}


#: Keywords so common in BLAST output and shell traces ("Skipped", "windows.net", DNA's "ACCA",
#: "key", "Homo sapiens") that the pre-check looks for them as their rules spell them instead: in
#: exact case, and after a non-word byte (or its %XX) where the rule starts with `\\b`. Each starts its rule.
_NON_WORD: Final = [
    *(bytes([c]) for c in range(0x20, 0x7F) if not chr(c).isalnum() and c != ord("_")),
    b"\t",
    b"\n",
    # the same, URL-encoded (a secret inside a query parameter)
    *(f"%{c:02X}".encode() for c in (*range(0x20, 0x30), *range(0x3A, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F), 9)),
    *(f"%{c:02x}".encode() for c in (*range(0x20, 0x30), *range(0x3A, 0x41), *range(0x5B, 0x61), *range(0x7B, 0x7F))),
]
_AFTER_NON_WORD: Final = {"s.": b"s.", "acca": b"ACCA", "asia": b"ASIA", "akia": b"AKIA", "abia": b"ABIA",
                          "a3t": b"A3T", "ey": b"ey", "a3-": b"A3-", "4b1d": b"4b1d"}  # fmt: skip
_EXACT: Final = {"sk": (b"SK",), "api": (b"api", b"Api", b"API")}
WEAK_KEYWORDS: Final = (*_AFTER_NON_WORD, *_EXACT)
_WEAK_NEEDLES: Final = tuple(
    sorted({d + lit for lit in _AFTER_NON_WORD.values() for d in _NON_WORD} | {n for ns in _EXACT.values() for n in ns})
)
_LINE_START: Final = tuple(_AFTER_NON_WORD.values())
#: Keywords as the raw bytes may spell them: as they are, and URL-encoded where that differs
#: (`_gitlab_session%3d`), lowercased like the bytes they are looked for in.
_BATCH_NEEDLES: Final = sorted(
    {form for k in KEYWORDS if k not in WEAK_KEYWORDS for form in (k, quote(k, safe="").lower())}
)
_BATCH_SCAN: Final = BytesAhoCorasick([k.encode() for k in _BATCH_NEEDLES], implementation=Implementation.DFA)
_WEAK_SCAN: Final = BytesAhoCorasick(list(_WEAK_NEEDLES), implementation=Implementation.DFA)
#: "api" is generic-api-key's: a hit counts only where that rule matches ("Homo sapiens" is no key).
_GENERIC_AT: Final = re.compile(RULES[_RULES_OF["api"][0]].regex.pattern.encode())
_ESCAPED: Final = re.compile(rb"%[0-9A-Fa-f]{2}|\\|&[#a-z]")


def keyword_hits(raw: bytes, low: bytes) -> list[int]:
    """Offsets in `raw` (`low` is its ASCII-lowercased copy) near which a rule keyword starts; a line
    holding none can match no rule."""
    hits = [start for _, start, _ in _BATCH_SCAN.find_matches_as_indexes(low)]
    for k, start, _ in _WEAK_SCAN.find_matches_as_indexes(raw):
        if (
            not _WEAK_NEEDLES[k].lower().startswith(b"api")
            or _GENERIC_AT.match(raw, start) is not None
            or _ESCAPED.search(raw, start, start + 64) is not None  # a decoded view may match
        ):
            hits.append(start)
    if raw.startswith(_LINE_START):
        hits.append(0)
    return hits


def rules_for(low: str) -> list[int]:
    """Indices of the rules with a keyword in `low` (a lowercased line), in table order."""
    found: set[str] = set()
    for k, start, end in _SCAN.find_matches_as_indexes(low):
        found.update(_CONTAINED[KEYWORDS[k]])
        # keywords that start inside this hit and run past it (the scan reports no overlaps)
        for k2, _, _ in _SCAN.find_matches_as_indexes(low[start + 1:end + _LONGEST]):
            found.update(_CONTAINED[KEYWORDS[k2]])
    return sorted({i for k in found for i in _RULES_OF[k]})


def _secret_group(m: re.Match[str]) -> int:
    for g in range(1, (m.re.groups or 0) + 1):
        if m.group(g):
            return g
    return 0


def rule_spans(text: str, low: str | None = None) -> list[Span]:
    """Secrets the rule set finds in one line, as (start, end, rule id)."""
    which = rules_for(text.lower() if low is None else low)
    spans: list[Span] = []
    for i in which:
        rule = RULES[i]
        for m in rule.regex.finditer(text):
            g = _secret_group(m)
            secret = m.group(g)
            if not secret or (rule.min_entropy and entropy(secret) <= rule.min_entropy):
                continue
            if _any(_GLOBAL_ALLOW, secret):
                continue
            low_secret = secret.lower()
            if any(w in low_secret for w in _GLOBAL_STOPWORDS) or rule.allowed(secret, rule.whole_match(text, m), text):
                continue
            spans.append((m.start(g), m.end(g), rule.id))
    return spans
