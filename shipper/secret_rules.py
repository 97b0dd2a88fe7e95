"""The maintained secret rule set (gitleaks' rules, generated into shipper/gitleaks_rules.py) as spans.

Each rule has keywords; a line is tried only against the rules whose keywords it holds (lowercased),
found with one Aho-Corasick scan, so 200 rules cost a line a few rule matches at most. A match is
kept the way gitleaks keeps it: its secret (the first non-empty group, else the whole match) must
reach the rule's entropy and pass the rule's and the global allowlists. Regexes compile on first use.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Final
from urllib.parse import quote

from ahocorasick_rs import AhoCorasick, MatchKind

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


def _rules_of() -> dict[str, tuple[int, ...]]:
    found: dict[str, list[int]] = {}
    for i, r in enumerate(RULES):
        for k in dict.fromkeys(r.keywords):
            found.setdefault(k, []).append(i)
    return {k: tuple(found[k]) for k in KEYWORDS}


#: Per keyword, the rules that name it, in table order.
_RULES_OF: Final = _rules_of()
#: Leftmost-longest, so the keywords inside a found one are added from _CONTAINED, and a rescan
#: from one past each hit finds the ones overlapping it.
_SCAN: Final = AhoCorasick(list(KEYWORDS), matchkind=MatchKind.LeftmostLongest)
_LONGEST: Final = max(map(len, KEYWORDS))
#: Per keyword, the keywords it holds (itself included), in KEYWORDS' (sorted) order: found among
#: its substrings, not by trying every keyword in every other.
_CONTAINED: Final = {k: tuple(sorted({k[a:b] for a in range(len(k)) for b in range(a + 1, len(k) + 1)}.intersection(KEYWORDS)))
                     for k in KEYWORDS}


#: Keywords so common in BLAST output and shell traces ("Skipped", "windows.net", DNA's "ACCA",
#: "key", "Homo sapiens") that the pre-check looks for them as their rules spell them instead: in
#: exact case, and after a non-word byte (or its %XX) where the rule starts with `\\b`. Each
#: starts its rule.
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
#: "api" is generic-api-key's, as a word's end ("myApi=", "API_KEY"), never inside a word ("Homo
#: sapiens"): it is looked for followed by anything but a letter (a name going on after it, as
#: "apiKey", "apiToken", holds another keyword) or upper case, and counts only where that rule matches (or the
#: text is escaped, and a decoded view may). Twilio's "SK" is looked for with a hex digit after it.
_NOT_LETTER: Final = [bytes([c]) for c in range(0x20, 0x7F) if not chr(c).isalpha()] + [b"\t", b"\n"]
_GENERIC_AT: Final = re.compile(RULES[_RULES_OF["api"][0]].regex.pattern.encode())
_ESCAPED: Final = re.compile(rb"%[0-9A-Fa-f]{2}|\\|&[#a-z]")

#: A needle: (the lowercased bytes the scan looks for, the spellings that count (None: any case),
#: offset of the keyword in the needle, whether generic-api-key must match at the keyword).
Needle = tuple[bytes, frozenset[bytes] | None, int, bool]


def _needles() -> tuple[Needle, ...]:
    found: dict[bytes, Needle] = {}
    for k in KEYWORDS:
        if k not in WEAK_KEYWORDS:
            # as they are, and URL-encoded where that differs (`_gitlab_session%3d`)
            for form in {k, quote(k, safe="").lower()}:
                found[form.encode()] = (form.encode(), None, 0, False)
    for lit in _AFTER_NON_WORD.values():
        for d in _NON_WORD:
            found[(d + lit).lower()] = ((d + lit).lower(), frozenset({d + lit}), len(d), False)
    for h in "0123456789abcdef":
        found[b"sk" + h.encode()] = (b"sk" + h.encode(), frozenset({b"SK" + x.encode() for x in {h, h.upper()}}), 0, False)
    for c in _NOT_LETTER:  # a keyword's own needle ("api-" is Octopus Deploy's) wins
        found.setdefault(b"api" + c, (b"api" + c, frozenset({f + c for f in _EXACT["api"]}), 0, True))
    for letter in string.ascii_lowercase.encode():  # "APIkey=": only the upper case goes on into a name
        after = bytes([letter])
        found.setdefault(b"api" + after, (b"api" + after, frozenset({b"API" + after, b"API" + after.upper()}), 0, True))
    return tuple(found.values())


#: Every rule keyword as the pre-check looks for it, in the ASCII-lowercased bytes of a batch.
NEEDLES: Final = _needles()
#: Keywords the pre-check finds at a line's start, where no byte precedes them.
LINE_START: Final = (*_AFTER_NON_WORD.values(), *_EXACT["sk"])


def weak_hit_counts(raw: bytes, start: int, needle: Needle) -> bool:
    """Whether a weak needle found at `start` of `raw` is spelled as its rule asks (and for "api",
    whether generic-api-key matches there)."""
    text, exact, at, generic = needle
    if exact is not None and raw[start:start + len(text)] not in exact:
        return False
    return (not generic or _GENERIC_AT.match(raw, start + at) is not None
            or _ESCAPED.search(raw, start, start + 64) is not None)


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
