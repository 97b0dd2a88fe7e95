"""Secret redaction: replace credentials in log lines by `[REDACTED:kind]`, counting each kind.

The pattern table below is data: each entry names a kind and a regex whose `v` group is the value
to hide (the rest of the match, such as `password=` or a URL, stays readable) and the needles
every match holds. A line is searched with one alternation of the entries whose needles it holds
(in table order, so it finds what the whole table would), and a cheap keyword pre-check skips
lines that cannot hold a secret, so ordinary lines cost one C-level search. No pattern matches a newline, so many lines joined with
"\\n" redact exactly as they would one by one.

Private key blocks span lines: `Redactor` keeps per-stream state and replaces every line from
`-----BEGIN ... PRIVATE KEY-----` through the matching END line, and the `value:` line that follows
a Kubernetes env entry's secret-like `- name:` line.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Final

from ahocorasick_rs import BytesAhoCorasick, Implementation, MatchKind

from shipper.reader import line_ends
from shipper.redact_views import decoded_views, to_line
from shipper.secret_rules import LINE_START, Needle, Span, rule_spans, weak_hit_counts
from shipper.secret_rules import NEEDLES as RULE_NEEDLES

#: A PEM block that never ends (a truncated log) stops being redacted after this many lines,
#: so one stray BEGIN line cannot hide the rest of a stream. Real keys are far shorter (RSA-4096: 51).
MAX_PEM_BLOCK_LINES: Final = 400

PEM_BEGIN_RE: Final = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
PEM_END_RE: Final = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
PEM_KIND: Final = "private_key"


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


@dataclass(frozen=True)
class SecretPattern:
    """One secret shape. `regex` has a `v` group (the value to hide) and may name a `key` group.

    `accept(key, value, match_text)` may veto a match (prose, placeholders, already masked values);
    `classify(key, value)` may name a more precise kind than `kind`. `needles`: lowercase
    substrings of which every match holds one (lowercased); a line holding none of them is not
    searched with this pattern. Empty: every line is.
    """

    kind: str
    regex: str
    accept: Callable[[str, str, str], bool] | None = None
    classify: Callable[[str, str], str] | None = None
    needles: tuple[str, ...] = ()


# Values that are already masked, empty-ish or placeholders: never secrets, never counted.
_NOT_A_SECRET_RE: Final = re.compile(
    r"\*+|x{3,}|\.{3}|-*redacted-*|\[redacted[^\]]*\]?|<[^>]*>|null|none|nil|true|false|undefined"
    r"|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%\(?[A-Za-z_]+\)?s?|\{\{[^}]*\}\}",
    re.IGNORECASE,
)
# Values a secret-like value would have: a letter and a digit, or length; prose words have neither.
_RANDOMISH_RE: Final = re.compile(r"(?=[^ ]*[0-9])(?=[^ ]*[A-Za-z])[^ ]{6,}|[^ ]{20,}")
_CODE_RE: Final = re.compile(r"[(\[{]")


def _is_value(value: str) -> bool:
    return not value.startswith("[REDACTED:") and _NOT_A_SECRET_RE.fullmatch(value.strip()) is None


def _accept_value(key: str, value: str, text: str) -> bool:
    return _is_value(value)


def _accept_assignment(key: str, value: str, text: str) -> bool:
    """`key=value`: the shell's working directory and code (`token = get_token()`) are not secrets."""
    if key in ("PWD", "OLDPWD") or not _is_value(value):
        return False
    return not (" =" in text or "= " in text) or _CODE_RE.search(value) is None


def _accept_colon(key: str, value: str, text: str) -> bool:
    """`key: value` also occurs in prose ("invalid token: the token expired"): for the bare words
    token/secret the value must look generated."""
    if not _is_value(value):
        return False
    if key.lower() in ("token", "secret"):
        return _RANDOMISH_RE.match(value) is not None
    return True


def _accept_short_token(key: str, value: str, text: str) -> bool:
    """`Bearer x`: a short value counts when it is not a word ("Bearer token", "bearer authentication")."""
    return _is_value(value) and (len(value) >= 16 or _RANDOMISH_RE.match(value) is not None)


def _accept_job_token(key: str, value: str, text: str) -> bool:
    """A job token's MAC is random: mixed case and digits; a run of one class is an id or a word."""
    return sum((any(c.isdigit() for c in value), any(c.islower() for c in value), any(c.isupper() for c in value))) >= 3


#: Space-separated values that read as prose or a placeholder, never as a password.
_SPACED_WORD_RE: Final = re.compile(r"[A-Za-z]+[.,;:!?]?|[0-9]+|[A-Za-z]+(?:[-_][A-Za-z]+)+")


def _accept_spaced(key: str, value: str, text: str) -> bool:
    """`password SECRET`: prose says "password for user", "token expired"; a secret looks generated."""
    return _is_value(value) and _SPACED_WORD_RE.fullmatch(value) is None and _RANDOMISH_RE.match(value) is not None


def _value_shape(value: str) -> str | None:
    for kind, shape in _VALUE_SHAPES:
        if shape.match(value):
            return kind
    return None


def _classify_userinfo(key: str, value: str) -> str:
    return _value_shape(value) or "url_userinfo"


def _classify_key(key: str, value: str) -> str:
    """The kind of a `key=value` secret, from the value's own shape first, else from the key."""
    shape = _value_shape(value)
    if shape is not None:
        return shape
    k = key.lower()
    if k.replace("_", "").endswith(("awssecretaccesskey", "secretaccesskey", "awssessiontoken")):
        return "aws_secret_key"
    if "pass" in k or "pwd" in k:
        return "password"
    if "api" in k:
        return "api_key"
    if "account" in k:
        return "azure_key"
    if "private" in k:
        return "private_key"
    if "token" in k:
        return "token"
    if "secret" in k:
        return "secret"
    return "access_key"


_VALUE_SHAPES: Final = (
    ("jwt", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")),
    ("github_token", re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}")),
    ("slack_token", re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}")),
    ("aws_access_key_id", re.compile(r"(?:AKIA|ASIA)[A-Z2-7]{16}\b")),
)

# Key names whose values are secrets: the key must END with one of these (so `token_type`,
# `tokenizer`, `BLAST_LOGS_TOKEN_FILE`, `secretName`, `monkey` and `api_key_id` are not).
_KEY_ENDINGS: Final = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    *(
        f"{stem}{sep}key"
        for stem in (
            "api",
            "access",
            "account",
            "private",
            "secret",
            "auth",
            "encryption",
            "signing",
            "master",
            "client",
            "subscription",
            "functions",
            "function",
            "storage",
            "sas",
            "consumer",
        )
        for sep in ("", "_", "-")
    ),
    "key-data",
    "key_data",
)
#: Checked right after a whole key was taken (possessively), so each key costs one pass.
_KW_END: Final = "(?:" + "|".join(f"(?<=(?i:{re.escape(e)}))" for e in _KEY_ENDINGS) + ")"
#: What every key name ending in one of `_KEY_ENDINGS` holds (the `needles` of the patterns that take one).
_KEY_NEEDLES: Final = ("pass", "pwd", "secret", "token", "key")
_KEY: Final = rf"(?<![A-Za-z0-9_./-])(?P<key>[A-Za-z0-9_.-]++{_KW_END})"
_QKEY: Final = rf"[\"'](?P<key>[A-Za-z0-9_. -]++{_KW_END})[\"']"
# A quoted value (JSON escapes allowed) when an opening quote was seen, else a bare value.
_DQ: Final = r'(?<=")(?:[^"\\\n]|\\.)+'
_SQ: Final = r"(?<=')[^'\n]+"


def _value(bare: str) -> str:
    return rf"(?P<q>[\"'])?(?P<v>(?(q)(?:{_DQ}|{_SQ})|{bare}))"


#: The table, in priority order (at one position, the first entry that matches wins).
PATTERNS: Final[tuple[SecretPattern, ...]] = (
    SecretPattern(
        "authorization",
        r"(?i:\b(?:proxy-)?authorization)[\"']?[ \t]*[:=][ \t]*[\"']?"
        r"(?:(?i:bearer|basic|digest|negotiate|ntlm|token|sharedkey(?:lite)?|sharedaccesssignature"
        r"|aws4-hmac-sha256)[ \t]+)?"
        r"(?P<v>[^\s\"'][^\"'\n]*?)(?=[ \t]*(?:[\"']|$|\n))",
        _accept_value,
        needles=("auth",),
    ),
    SecretPattern("bearer_token", r"(?i:\bbearer)[ \t]+(?P<v>[A-Za-z0-9._~+/-]{4,}=*)", _accept_short_token, needles=("bearer",)),
    SecretPattern("jwt", r"(?<![A-Za-z0-9_-])(?P<v>eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)", needles=("eyj",)),
    SecretPattern("aws_access_key_id", r"\b(?P<v>(?:AKIA|ASIA)[A-Z2-7]{16})\b", needles=("akia", "asia")),
    SecretPattern(
        "aws_secret_key",
        r"(?<![A-Za-z0-9])(?i:aws_?secret_?access_?key|aws_?secret_?key|secretaccesskey|aws_?session_?token"
        r"|sessiontoken)[\"']?(?:[ \t]*[:=][ \t]*|[ \t]+)" + _value(r"[A-Za-z0-9/+=]{16,}"),
        _accept_value,
        needles=("secret", "token"),
    ),
    SecretPattern("github_token", r"\b(?P<v>gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
                  needles=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    SecretPattern("slack_token", r"\b(?P<v>xox[abprs]-[A-Za-z0-9-]{10,})", needles=("xox",)),
    SecretPattern(
        "slack_webhook", r"(?i:hooks\.slack\.com)/(?:services|workflows|triggers)/(?P<v>[A-Za-z0-9+/_-]+)",
        needles=("slack",),
    ),
    SecretPattern("azure_sas", r"(?<![A-Za-z0-9_-])sig=(?P<v>[^\s&;\"'<>]+)", _accept_value, needles=("sig",)),
    SecretPattern("url_signature", r"(?i:\bX-(?:Amz|Goog)-Signature)=(?P<v>[^\s&;\"'<>]+)", _accept_value, needles=("sig",)),
    SecretPattern("azure_key", r"(?i:\b(?:AccountKey|SharedAccessKey))=(?P<v>[^\s;\"'<>]+)", _accept_value, needles=("key",)),
    SecretPattern(
        "url_userinfo",
        r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>]*:(?P<v>[^\s/?#@\"'<>]+)@",
        _accept_value,
        _classify_userinfo,
        needles=("@",),
    ),
    SecretPattern("google_api_key", r"\b(?P<v>AIza[0-9A-Za-z_-]{35})(?![0-9A-Za-z_-])", needles=("aiza",)),
    # docker/podman config.json: "auth": "<base64 of user:password>"
    SecretPattern("registry_auth", r"[\"']auth[\"'][ \t]*:[ \t]*[\"'](?P<v>[A-Za-z0-9+/]{8,}={0,2})[\"']", _accept_value, needles=("auth",)),
    # openssl -passin/-passout/-pass pass:<password>
    SecretPattern("password", r"(?<![A-Za-z0-9_-])-pass(?:in|out)?[ \t]+pass:" + _value(r"[^\s\"']+"), _accept_value, needles=("pass",)),
    # A short -p flag is a password only for login commands: sshpass -p '...', az/docker login ... -p ...
    SecretPattern(
        "password",
        r"(?i:\bsshpass\b|\blogin\b)[^\n]*?[ \t]-p[ \t]+" + _value(r"[^\s\"'-][^\s\"']*"),
        _accept_value,
        needles=("pass", "login"),
    ),
    # --- shapes specific to ElasticBLAST on Azure/AKS and to shell traces (issue 19) ---
    # <password>...</password>, <ClientSecret>...</ClientSecret>
    SecretPattern(
        "password",
        rf"<(?P<key>[A-Za-z0-9_.:-]++{_KW_END})(?:[ \t][^>\n]*)?>(?P<v>[^<\n]+)</",
        _accept_value,
        _classify_key,
        needles=_KEY_NEEDLES,
    ),
    # curl -u user:SECRET, curl --user 'user:SECRET' (the pair, as gitleaks' curl-auth-user has it)
    SecretPattern(
        "password",
        r"\bcurl\b[^\n]*?[ \t](?:-u|--user)(?:=|[ \t]*)(?P<q>[\"'])?"
        r"(?P<v>[^:\s\"']*:(?(q)[^\"'\n]+|[^\s\"']+))",
        _accept_value,
        needles=("curl",),
    ),
    # mysql -pSECRET (the password sticks to -p; `-p` alone prompts)
    SecretPattern(
        "password",
        r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mariadb|mariadb-dump)\b[^\n]*?[ \t]-p"
        + _value(r"[^\s\"'-][^\s\"']*"),
        _accept_value,
        needles=("mysql", "mariadb"),
    ),
    # sshpass -pSECRET
    SecretPattern("password", r"\bsshpass\b[^\n]*?[ \t]-p" + _value(r"[^\s\"'-][^\s\"']*"), _accept_value, needles=("pass",)),
    # htpasswd -b[c] FILE USER SECRET, htpasswd -nb USER SECRET: the password is the last argument
    SecretPattern(
        "password",
        r"\bhtpasswd\b(?:[ \t]+-[A-Za-z]+)*?[ \t]+-[A-Za-z]*b[A-Za-z]*(?:[ \t]+-[A-Za-z]+)*"
        r"(?:[ \t]+[^\s-]\S*)?[ \t]+[^\s-]\S*[ \t]+"
        + _value(r"[^\s\"'|;&<>]+")
        + r"(?=[\"']?(?:[ \t]+(?:[0-9]*>|[|;&<])|[ \t]*$))",
        _accept_value,
        needles=("pass",),
    ),
    # SQL: IDENTIFIED BY 'SECRET', PASSWORD 'SECRET'
    SecretPattern("password", r"(?i:\bidentified[ \t]+by)[ \t]+" + _value(r"[^\s\"';]+"), _accept_value, needles=("identified",)),
    # PASSWORD SECRET, password hunter2 (.netrc, prompts echoed by `set -x`): a generated-looking value only
    SecretPattern(
        "password",
        r"(?<![A-Za-z0-9_-])(?P<key>(?i:password|passwd|passphrase|secret|token|api[_-]?key))[ \t]+"
        r"(?P<v>[^\s\"'=:]*[^\s\"'=:.,;!?)\]}])(?=[ \t.,;!?)\]}]|$)",
        _accept_spaced,
        _classify_key,
        needles=("pass", "secret", "token", "key"),
    ),
    # --password hunter2, --client-secret=..., --account-key "..."
    SecretPattern(
        "password",
        rf"(?<![A-Za-z0-9_-])--(?P<key>[A-Za-z0-9-]++{_KW_END})(?:=|[ \t]+)" + _value(r"[^\s\"'-][^\s\"']*"),
        _accept_value,
        _classify_key,
        needles=_KEY_NEEDLES,
    ),
    # "password": "...", 'api_key': '...'
    SecretPattern(
        "password",
        _QKEY + r"[ \t]*(?:=>|[:=])[ \t]*" + _value(r"[^\s,}\]\"'>]+"),
        _accept_value,
        _classify_key,
        needles=_KEY_NEEDLES,
    ),
    # password=..., ?token=...&, DB_PASSWORD = "..."
    SecretPattern(
        "password",
        _KEY + r"[ \t]*=[ \t]*" + _value(r"[^\s&;,\"'<>)\]}]+"),
        _accept_assignment,
        _classify_key,
        needles=_KEY_NEEDLES,
    ),
    # password: ..., X-Api-Key: ... (a header or YAML value runs to the end of the line)
    SecretPattern(
        "password",
        _KEY + r"[ \t]*:(?:[ \t]+" + _value(r"[^\s,{}\"'](?:[^\n,{}\"']*[^\s,{}\"'])?") + r"|"
        r"(?P<q2>[\"'])(?P<v2>(?:" + _DQ + "|" + _SQ + ")))",
        _accept_colon,
        _classify_key,
        needles=_KEY_NEEDLES,
    ),
)

# Cheap pre-check: every pattern above, and every rule of the rule set, needs one of these
# substrings (in any ASCII case), so a line (or a whole batch) holding none of them is left alone
# after one scan. Keep in step with PATTERNS (tests/shipper/test_redact.py checks every sample secret
# trips it); the rule set's keywords come with its data (shipper/secret_rules.py).
NEEDLES_FOLDED: Final = (
    "pass", "pwd", "secret", "token", "key", "sig", "auth", "bearer", "slack", "login",
    "curl", "mysql", "mariadb", "identified", "==",
)  # fmt: skip
#: Case-sensitive prefixes of our own patterns (matched in any case, like the rest).
NEEDLES_EXACT: Final = (
    "@",
    "eyJ",
    "xox",
    "AKIA",
    "ASIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "AIza",
)
#: Our table's needles, lowercase, each once (the rule set's keywords are scanned apart, so a line
#: holding only one of those costs the few rules it names, not our whole table).
OWN_NEEDLES: Final = tuple(sorted({n.lower() for n in (*NEEDLES_FOLDED, *NEEDLES_EXACT)}))

#: Every needle: ours (any case), then the rule set's (some only in the spellings their rules ask).
#: generic-api-key's "API" followed by a letter ("APIkey="), which counts only in upper case: found
#: by a case-sensitive search for "API", not by the automaton, where every "api" inside a word
#: ("Homo sapiens": 125,000 per 1,000,000 bench lines) would be a match to walk and reject.
_UPPER_API: Final = {n[0][3:]: n for n in RULE_NEEDLES
                     if n[0].startswith(b"api") and len(n[0]) == 4 and n[0][3:].isalpha() and n[3]}
_SCANNED_RULE_NEEDLES: Final = tuple(n for n in RULE_NEEDLES if n not in set(_UPPER_API.values()))
_NEEDLES: Final[tuple[Needle, ...]] = (
    *((n.encode(), None, 0, False) for n in OWN_NEEDLES if n.encode() not in {x[0] for x in RULE_NEEDLES}),
    *_SCANNED_RULE_NEEDLES,
)


@cache
def _automaton() -> BytesAhoCorasick:
    """One automaton that finds every needle in a single pass over the ASCII-lowercased raw bytes
    of a batch (the Rust `aho-corasick` crate; lowering a copy costs less than scanning it), for the
    pure path: built when first used (2.5 ms), not at every start of the compiled one.
    Leftmost-longest, so a keyword is not hidden by a weak needle that starts it ("api_org_", "api_")."""
    return BytesAhoCorasick([n[0] for n in _NEEDLES], matchkind=MatchKind.LeftmostLongest,
                            implementation=Implementation.DFA)


_WEAK: Final = {i: n for i, n in enumerate(_NEEDLES) if n[1] is not None}
#: Needles below this index are ours.
_OURS: Final = len(_NEEDLES) - len(_SCANNED_RULE_NEEDLES)
_LONGEST: Final = max(len(n[0]) for n in _NEEDLES)
#: For each weak needle, (offset into it, needles) pairs: the needles that could start inside
#: a match of it, where the scan (no overlaps) would not see them: a weak match that does not count
#: is scanned again only when one of them is really there ("Homo sapiens" holds "apie", which no
#: needle starts inside of: one look, not a second scan).
#: Our needle for a storage key's base64 padding: it counts only after a base64 character, so a
#: progress bar ("[==========] 100%") costs a look, not a run of our whole table on its line.
_PAD: Final = next(i for i, n in enumerate(_NEEDLES) if n[0] == b"==")
_B64_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


@cache
def _prefixes() -> tuple[dict[bytes, list[bytes]], frozenset[bytes]]:
    """Every prefix of a needle -> the needles it begins; and the needles."""
    by_prefix: dict[bytes, list[bytes]] = {}
    for n in dict.fromkeys(n[0] for n in _NEEDLES):
        for end in range(1, len(n) + 1):
            by_prefix.setdefault(n[:end], []).append(n)
    return by_prefix, frozenset(n[0] for n in _NEEDLES)


def _hidden(text: bytes) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
    """(offset into `text`, needles) pairs: the needles that begin with the rest of a match of
    `text` from that offset, or end inside it."""
    by_prefix, whole = _prefixes()
    pairs = []
    for j in range(1, len(text)):
        rest = text[j:]
        found = (*by_prefix.get(rest, ()), *(rest[:end] for end in range(1, len(rest)) if rest[:end] in whole))
        if found:
            pairs.append((j, tuple(dict.fromkeys(found))))
    return tuple(pairs)


#: `_hidden` of the weak needles a scan met and did not count, by needle index (made as they are
#: met: most of the 672 never are).
_HIDDEN: Final[dict[int, tuple[tuple[int, tuple[bytes, ...]], ...]]] = {}
#: a padding `==` hides no other `==` worth a look: the one inside it follows a `=`
_HIDDEN_PAD: Final = tuple((j, tuple(n for n in found if n != b"==")) for j, found in _hidden(b"=="))
#: The bytes (either case) that follow a padding `==` where a needle it hides goes on past it
#: (each starts at its second `=`); every other `==` is left at one look.
_PAD_NEXT: Final = frozenset(bytes([c]) for j, found in _HIDDEN_PAD for n in found
                             for c in {n[2 - j], n[2 - j] ^ 0x20 if 97 <= n[2 - j] <= 122 else n[2 - j]})
#: The job token has no keyword: its shape (a dot, then exactly 43 base64url characters) is the
#: pre-check, one C-level search of the batch.
_JOB_TOKEN_SHAPE: Final = re.compile(rb"\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_=-])")


def marks_py(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of every b"API" in `data`, and of every job token's shape (`_JOB_TOKEN_SHAPE`)."""
    api: list[int] = []
    pos = data.find(b"API")
    while pos >= 0:
        api.append(pos)
        pos = data.find(b"API", pos + 3)
    return api, [m.start() for m in _JOB_TOKEN_SHAPE.finditer(data)] if b"." in data else []


try:  # the same in one C pass (shipper/_hotpath.c); without it, two searches and a regex
    from shipper._hotpath import marks as _marks
except ImportError:  # pragma: no cover - built without a C compiler
    _marks = marks_py


def _find_py(data: bytes) -> list[tuple[int, int, int]]:
    """(needle index, start, end) of every match of `_NEEDLES` in `data` in any ASCII case,
    leftmost-longest and not overlapping: the automaton over a lowered copy."""
    return _automaton().find_matches_as_indexes(data.lower())


try:  # the same matches from one C pass that folds case as it goes and releases the GIL
    from shipper._hotpath import find as _c_find
    from shipper._hotpath import needles as _c_needles

    _AUTOMATON: Final = _c_needles([n[0] for n in _NEEDLES])

    def _find(data: bytes) -> list[tuple[int, int, int]]:
        return _c_find(_AUTOMATON, data)
except (ImportError, ValueError):  # pragma: no cover - no C compiler, or needles the trie does not take
    _find = _find_py


def _hits(data: bytes) -> tuple[list[int], list[int]]:
    """Byte offsets in `data` where one of our needles (or a job token's shape) starts, and where
    only a rule keyword does."""
    own: list[int] = []
    rules: list[int] = []
    weak, ours = _WEAK, _OURS
    for k, start, end in _find(data):
        needle = weak.get(k)
        if needle is None:
            if k != _PAD or (start and data[start - 1] in _B64_BYTES):
                (own if k < ours else rules).append(start)
                continue
            if data[end:end + 1] not in _PAD_NEXT:  # a bar's `===`: no needle hides in it
                continue
            hidden = _HIDDEN_PAD
        elif weak_hit_counts(data, start, needle):
            rules.append(start + needle[2])  # where the keyword starts, after its delimiter
            continue
        else:
            hidden = _HIDDEN.get(k) or _HIDDEN.setdefault(k, _hidden(needle[0]))
        # a match that does not count: look again only where it may hide another needle
        low = data[start:end + _LONGEST].lower()
        if any(low.startswith(found, j) for j, found in hidden):
            for k2, s2, _ in _find(low[1:]):
                at = start + 1 + s2
                n2 = weak.get(k2)
                if n2 is None and (k2 != _PAD or data[at - 1] in _B64_BYTES):
                    rules.append(at)
                    break
                if n2 is not None and weak_hit_counts(data, at, n2):
                    rules.append(at + n2[2])
                    break
    api, tokens = _marks(data)
    for pos in api:
        upper = _UPPER_API.get(data[pos + 3:pos + 4].lower())
        if upper is not None and weak_hit_counts(data, pos, upper):
            rules.append(pos)
    own += tokens
    if data.startswith(LINE_START):
        rules.append(0)
    return own, rules


def needle_positions(data: bytes) -> list[int]:
    """Byte offsets in `data` (raw UTF-8 of many lines) where a needle starts; empty when none.

    The byte form of `might_hold_secret` for a whole batch: one Aho-Corasick scan. Matches do not
    overlap, so a line may report fewer hits than it holds needles, but never none (where a weak
    needle does not count, the bytes it covered are scanned again for another).
    """
    own, rules = _hits(data)
    return own + rules


def _needs_our_table(text: str) -> bool:
    """Whether our table can match `text`, for a line the scan found only a rule keyword in (a
    keyword found there may have hidden one of our needles)."""
    low = text.lower()
    return any(map(low.__contains__, OWN_NEEDLES)) or ("." in text and _JOB_TOKEN_SHAPE.search(text.encode()) is not None)


def might_hold_secret(text: str) -> bool:
    """False when no pattern nor rule can match `text` (one line or many joined)."""
    return bool(needle_positions(text.encode("utf-8", "surrogatepass")))


#: Lines by index: a whole batch (a list) or some of its lines (a dict).
Lines = list[str] | dict[int, str]


def _needle_lines(texts: Lines, which: Iterable[int]) -> tuple[set[int], set[int]]:
    """Those of lines `which` that hold one of our needles, and those that hold only a rule
    keyword: one scan of them all, encoded and joined."""
    which = list(which)
    if not which:
        return set(), set()
    encoded = [texts[i].encode("utf-8", "surrogatepass") for i in which]
    own, rules = _hits(b"\n".join(encoded))
    ends = line_ends(encoded)
    return {which[bisect_right(ends, pos)] for pos in own}, {which[bisect_right(ends, pos)] for pos in rules}


#: `Redactor.state`: (lines seen inside an open PEM block or -1, the env name awaiting its value or "").
RedactorState = tuple[int, str]
#: The state at a stream's start and after any ordinary line.
CLEAN_STATE: Final[RedactorState] = (-1, "")


@dataclass(frozen=True)
class _Compiled:
    regex: re.Pattern[str]
    #: per outer group index: (pattern, value group indices, key group index or 0)
    groups: dict[int, tuple[SecretPattern, tuple[int, ...], int]]


class _Table:
    """A pattern table, searched a line at a time with one alternation of only those patterns whose
    `needles` the line holds, in table order. A pattern left out cannot match anywhere in the line,
    so at every position the same pattern matches first as in the whole table's alternation: the
    same matches, found without trying ~30 patterns at every position (50 us a line). Each subset is
    compiled when a line first needs it."""

    #: Compiled subsets kept at once (a stream's lines use a handful; past this the cache starts over).
    MAX_SUBSETS: Final = 64

    def __init__(self, patterns: Sequence[SecretPattern]) -> None:
        self.patterns = tuple(patterns)
        self._always = sum(1 << i for i, p in enumerate(self.patterns) if not p.needles)
        masks: dict[str, int] = {}
        for i, p in enumerate(self.patterns):
            for n in p.needles:
                masks[n] = masks.get(n, 0) | 1 << i
        self._needles = tuple(masks.items())
        self._compiled: dict[int, _Compiled] = {}

    def for_line(self, text: str) -> _Compiled | None:
        """The alternation of the patterns that can match `text`; None when none can."""
        low = text.lower()
        mask = self._always
        for needle, bits in self._needles:
            if needle in low:
                mask |= bits
        return self.subset(mask) if mask else None

    def subset(self, mask: int) -> _Compiled:
        """The alternation of the patterns whose bits `mask` sets, in table order."""
        found = self._compiled.get(mask)
        if found is None:
            if len(self._compiled) >= self.MAX_SUBSETS:
                self._compiled.clear()
            found = self._compiled[mask] = _compile([p for i, p in enumerate(self.patterns) if mask >> i & 1])
        return found


def _compile(patterns: Sequence[SecretPattern]) -> _Compiled:
    parts = []
    for i, p in enumerate(patterns):
        src = re.sub(r"\(\?P<(\w+)>", rf"(?P<\1_{i}>", p.regex)
        src = re.sub(r"\(\?\((\w+)\)", rf"(?(\1_{i})", src)
        src = re.sub(r"\(\?P=(\w+)\)", rf"(?P=\1_{i})", src)
        parts.append(f"(?P<k_{i}>{src})")
    regex = re.compile("|".join(parts), re.ASCII)
    groups: dict[int, tuple[SecretPattern, tuple[int, ...], int]] = {}
    index = regex.groupindex
    for i, p in enumerate(patterns):
        values = tuple(index[n] for n in (f"v_{i}", f"v2_{i}") if n in index)
        groups[index[f"k_{i}"]] = (p, values, index.get(f"key_{i}", 0))
    return _Compiled(regex, groups)


_DEFAULT: Final = _Table(PATTERNS)

#: A Kubernetes env entry names a secret on one line and holds it on the next:
#: `- name: DB_PASSWORD` / `  value: "..."` (a pod spec printed with `kubectl get -o yaml`).
_ENV_NAME_RE: Final = re.compile(rf"[ \t]*(?:-[ \t]+)?name:[ \t]*[\"']?{_KEY}[\"']?[ \t]*", re.ASCII)
_ENV_VALUE_RE: Final = re.compile(r"[ \t]*value:[ \t]*" + _value(r"\S(?:[^\n]*\S)?") + r"[\"']?[ \t]*", re.ASCII)


class Redactor:
    """Redacts one stream's lines in order; `counts` holds how many secrets of each kind it hid."""

    def __init__(self, patterns: Sequence[SecretPattern] | None = None, *, rule_set: bool | None = None) -> None:
        """`patterns` replaces our own table; the maintained rule set applies too unless `rule_set`
        is False (by default only with our own table, so a custom table is exactly that)."""
        self._table = _DEFAULT if patterns is None else _Table(patterns)
        self._rule_set = patterns is None if rule_set is None else rule_set
        self.counts: Counter[str] = Counter()
        self._pem_lines = -1  # lines seen inside an open PEM block; -1 when none is open
        self._env_key = ""  # the secret-like env name the previous line declared, if any

    @property
    def in_private_key(self) -> bool:
        return self._pem_lines >= 0

    @property
    def state(self) -> RedactorState:
        """What the next line's redaction depends on: lines into an open PEM block, a pending env name."""
        return (self._pem_lines, self._env_key)

    @state.setter
    def state(self, value: RedactorState) -> None:
        self._pem_lines, self._env_key = value

    def redact(self, text: str) -> str:
        """One line (no newline). Updates the PEM-block state and the counters."""
        if self._pem_lines >= 0:
            return self._inside_pem(text)
        if self._env_key:
            return self._env_value(text)
        own, rules = _hits(text.encode("utf-8", "surrogatepass"))
        if not own and not rules:
            return text
        if "name:" in text and self._env_name(text):
            return text
        if "PRIVATE KEY" in text:
            m = PEM_BEGIN_RE.search(text)
            if m is not None:
                return self._pem_start(text, m)
        return self._sub(text, bool(own) or _needs_our_table(text))

    def redact_batch(
        self, texts: list[str], raw: bytes, ends: list[int] | None = None, also: Iterable[int] = ()
    ) -> list[str]:
        """Redact consecutive lines in place, the same as `redact` on each in turn, and return them.

        `raw` is the lines' original bytes joined with b"\\n" (one byte scan finds the few lines
        worth a closer look) and `ends` its `line_ends` if already known; `also` names lines whose
        text differs from their raw bytes (rendered escapes), which are checked on their own.
        """
        own_hits, rule_hits = _hits(raw)
        own: set[int] = set()
        candidates: set[int] = set()
        if own_hits or rule_hits:
            if ends is None:
                ends = line_ends(raw.split(b"\n"))
            own.update(bisect_right(ends, pos) for pos in own_hits)
            candidates.update(bisect_right(ends, pos) for pos in rule_hits)
        if not self.redact_found(texts, own, candidates, also):
            for i, t in enumerate(texts):  # PEM and env state must see every line, in order
                texts[i] = self.redact(t)
        return texts

    def redact_found(self, texts: Lines, own: set[int], candidates: set[int], also: Iterable[int] = ()) -> bool:
        """Redact in place the lines a scan of their raw bytes found: `own` holding one of our
        needles, `candidates` a rule keyword; `also` as for `redact_batch`. `texts` may hold only
        the lines named (by index). False, with nothing changed or counted, when the PEM or env
        state must see every line in order instead (`redact` on each)."""
        own2, candidates2 = _needle_lines(texts, also)
        own = own | own2
        candidates = candidates | candidates2 | own
        if self._pem_lines >= 0 or self._env_key or any(
            "PRIVATE KEY" in texts[i] or "name:" in texts[i] for i in candidates
        ):
            return False
        sub = self._sub
        for i in sorted(candidates):
            texts[i] = sub(texts[i], i in own or _needs_our_table(texts[i]))
        return True

    @staticmethod
    def hits(raw: bytes) -> tuple[list[int], list[int]]:
        """Byte offsets in `raw` (lines joined with b"\\n") where one of our needles starts, and
        where only a rule keyword does: what `redact_found` takes, once mapped to lines."""
        return _hits(raw)

    def _plain(self, text: str) -> str:
        if not might_hold_secret(text):
            return text
        return self._sub(text)

    def _pem_start(self, text: str, begin: re.Match[str]) -> str:
        self.counts[PEM_KIND] += 1
        head = self._plain(text[: begin.start()])
        end = PEM_END_RE.search(text, begin.end())
        if end is None:
            self._pem_lines = 0
            return head + marker(PEM_KIND)
        return head + marker(PEM_KIND) + self.redact(text[end.end() :])

    def _env_name(self, text: str) -> bool:
        m = _ENV_NAME_RE.fullmatch(text)
        self._env_key = m.group("key") if m is not None else ""
        return m is not None

    def _env_value(self, text: str) -> str:
        key, self._env_key = self._env_key, ""
        m = _ENV_VALUE_RE.fullmatch(text)
        if m is None or not _is_value(m.group("v")):
            return self.redact(text)
        kind = _classify_key(key, m.group("v"))
        self.counts[kind] += 1
        return text[: m.start("v")] + marker(kind) + text[m.end("v") :]

    def _inside_pem(self, text: str) -> str:
        end = PEM_END_RE.search(text)
        if end is not None:
            self._pem_lines = -1
            return marker(PEM_KIND) + self.redact(text[end.end() :])
        self._pem_lines += 1
        if self._pem_lines > MAX_PEM_BLOCK_LINES:
            self._pem_lines = -1
            return self.redact(text)
        return marker(PEM_KIND)

    def _sub(self, text: str, ours: bool = True) -> str:
        """`text` with every secret that our table (if `ours`: it can match) or the rule set finds,
        in it or in a decoded view of it, replaced by its marker; overlapping finds merge, so no
        byte of either survives."""
        spans = self._spans(text, ours)
        for view, origin in decoded_views(text):
            # what the line itself showed was searched above: a view is searched from a little
            # before its first undone escape (secrets and their keys lie after that)
            first = next((i for i, (a, b) in enumerate(pairwise(origin)) if b - a != 1), 0)
            lo = max(0, first - _VIEW_CONTEXT)
            part = view[lo:]
            spans += [
                (*to_line(origin, lo + a, lo + b), kind)
                for a, b, kind in self._spans(part, ours or _needs_our_table(part))
            ]
        if not spans:
            return text
        if "[REDACTED:" in text:  # never redact (part of) a marker: redaction stays idempotent
            marks = [m.span() for m in _MARKER_RE.finditer(text)]
            spans = [sp for sp in spans if not any(sp[0] < e and s < sp[1] for s, e in marks)]
        return self._render(text, spans)

    def _spans(self, text: str, ours: bool = True) -> list[Span]:
        """Our table's finds and the rule set's. A rule's find that starts with a URL's scheme, host
        and path words (gitleaks' Slack and Teams webhooks) keeps those readable, as ours do."""
        spans: list[Span] = []
        if ours:
            table = self._table.for_line(text)
            if table is not None:
                spans += [sp for m in table.regex.finditer(text) if (sp := _own_span(table, m)) is not None]
            spans += shape_spans(text)
        if self._rule_set:
            for start, end, kind in rule_spans(text):
                head = _URL_HEAD.match(text, start, end)
                spans.append((head.end() if head is not None and head.end() < end else start, end, kind))
        return spans

    def _render(self, text: str, spans: list[Span]) -> str:
        out: list[str] = []
        pos, end, kind = 0, -1, ""
        for s, e, k in sorted(spans, key=_span_order):
            if s < end:  # overlaps the group being built: widen it
                end = max(end, e)
                continue
            if end >= 0:
                out.append(marker(kind))
                self.counts[kind] += 1
                pos = end
            out.append(text[pos:s])
            end, kind = e, k
        if end < 0:
            return text
        out.append(marker(kind))
        self.counts[kind] += 1
        out.append(text[end:])
        return "".join(out)


def _own_span(table: _Compiled, m: re.Match[str]) -> Span | None:
    pattern, value_groups, key_group = table.groups[m.lastindex or 0]
    for g in value_groups:
        if m.start(g) >= 0:
            break
    else:  # pragma: no cover - every pattern's alternatives capture a value
        return None
    value = m.group(g)
    key = m.group(key_group) if key_group else ""
    if pattern.accept is not None and not pattern.accept(key, value, m.group()):
        return None
    kind = pattern.classify(key, value) if pattern.classify is not None else pattern.kind
    return m.start(g), m.end(g), kind


# --- secrets known by their shape alone (no keyword) ----------------------------------------------
# A regex that may start anywhere would try every position of a line; these search for a literal
# (a dot, "==") and check the characters around it, so a line without one costs a substring search.

#: The shipper's own job token `<job_id>.<43 base64url characters>` (contract: HMAC-SHA256 of the job id).
_JOB_TOKEN_TAIL: Final = re.compile(r"\.([A-Za-z0-9_-]{43})(?![A-Za-z0-9_=-])", re.ASCII)
_JOB_ID_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
#: A storage account key printed without its name (`az storage account keys list`): 64 bytes in base64.
_B64_KEY_END: Final = re.compile(r"==(?![A-Za-z0-9+/=])")
_B64_KEY_BODY: Final = re.compile(r"[A-Za-z0-9+/]{86}", re.ASCII)
_B64_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def shape_spans(text: str) -> list[Span]:
    """Job tokens and bare storage account keys in `text`, as (start, end, kind)."""
    spans: list[Span] = []
    for m in _JOB_TOKEN_TAIL.finditer(text):
        if m.start() > 0 and text[m.start() - 1] in _JOB_ID_CHARS and _accept_job_token("", m.group(1), ""):
            spans.append((m.start(1), m.end(1), "job_token"))
    for m in _B64_KEY_END.finditer(text):
        start = m.start() - 86
        if start >= 0 and _B64_KEY_BODY.fullmatch(text, start, m.start()) and (start == 0 or text[start - 1] not in _B64_CHARS):
            spans.append((start, m.end(), "azure_key"))
    return spans


#: How far before a view's first undone escape its search starts (a key name and `=` or `:`).
_VIEW_CONTEXT: Final = 64
_URL_HEAD: Final = re.compile(r"(?:[a-z]+://)?[\w-]+(?:\.[\w-]+)+(?:/[A-Za-z]+)*/", re.ASCII)
_MARKER_RE: Final = re.compile(r"\[REDACTED:[^\]]*\]")
#: Our kinds come first where finds overlap (ours are sorted first at one start); rule-set kinds
#: named for a vendor win over gitleaks' catch-all.
_GENERIC_RULES: Final = frozenset({"generic-api-key"})


def _span_order(span: Span) -> tuple[int, int, int]:
    """By start; at one start ours (snake_case kinds) before the rule set's (gitleaks' kebab-case
    ids), its catch-all last; then the longest."""
    kind = span[2]
    return span[0], 2 if kind in _GENERIC_RULES else "-" in kind, -span[1]
