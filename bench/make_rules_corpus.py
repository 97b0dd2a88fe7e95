"""The rule-set corpus: secrets drawn from every rule's own regex, in the shapes logs carry them.

    .venv/bin/python bench/make_redaction_corpus.py   # writes tests/data/rules-corpus.jsonl too

For each rule of shipper/gitleaks_rules.py, strings are drawn from the rule's regex (a small
generator over Python's regex parse tree) until `SECRETS_PER_RULE` of them are ones the rule
itself accepts on a plain line (right secret group, entropy, allowlists). Each is then written in
every shape of SHAPES: plain, URL-encoded, JSON inside a JSON string, XML, a CLI argument of a
`set -x` trace, an HTTP header. Our own kinds (issue 19's bypasses, the job token, Azure and AKS
settings) come from templates in OWN. A record is `{"kind", "shape", "lines", "secrets"}`; its
`secrets` are the secret as the line spells it (the encoding included), so a test can assert that
neither it nor any 8-character piece of it survives redaction. Seeded: byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable
from html import escape as xml_escape
from re import _constants as c  # type: ignore[attr-defined]
from re import _parser as sre  # type: ignore[attr-defined]
from typing import Any
from urllib.parse import quote

from shipper.secret_rules import RULES, Rule, rule_spans

SEED = 20261207
SECRETS_PER_RULE = 3
TRIES = 400
#: What `.` and negated classes draw from: the characters secrets are made of (quotes, backslashes
#: and spaces there would only test the sampler, not the redactor).
PRINTABLE = list(string.ascii_letters + string.digits + "-_.+/=")
#: The fallback for rules that need more (quoted arguments, YAML): printable ASCII less line breaks.
WIDE = [ch for ch in string.printable if ch not in "\n\r\x0b\x0c"]
Record = dict[str, Any]


class RegexSampler:
    """Random strings matching a regex (bounded repeats; lookarounds ignored, so check the result)."""

    def __init__(self, r: random.Random) -> None:
        self.r = r
        self.pool = PRINTABLE

    def sample(self, pattern: str) -> str:
        return self._seq(sre.parse(pattern, re.ASCII), {})

    def _seq(self, items: Any, groups: dict[int, str]) -> str:
        return "".join(self._one(op, av, groups) for op, av in items)

    def _class(self, av: Any) -> list[str]:
        allowed: set[str] = set()
        negate = False
        for op, a in av:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                allowed.add(chr(a))
            elif op is c.RANGE:
                allowed.update(chr(x) for x in range(a[0], a[1] + 1))
            elif op is c.CATEGORY:
                allowed.update(self._category(a))
        pool = [ch for ch in (self.pool if negate else WIDE) if (ch in allowed) != negate]
        return pool or ["x"]

    @staticmethod
    def _category(cat: Any) -> list[str]:
        words = string.ascii_letters + string.digits + "_"
        table = {
            c.CATEGORY_DIGIT: string.digits, c.CATEGORY_NOT_DIGIT: [x for x in WIDE if not x.isdigit()],
            c.CATEGORY_SPACE: " \t", c.CATEGORY_NOT_SPACE: [x for x in PRINTABLE if not x.isspace()],
            c.CATEGORY_WORD: words, c.CATEGORY_NOT_WORD: " -.+/=:",
        }  # fmt: skip
        return list(table.get(cat, "x"))

    def _one(self, op: Any, av: Any, groups: dict[int, str]) -> str:
        r = self.r
        if op is c.LITERAL:
            ch = chr(av)
            return ch if ch not in "\n\r" else " "
        if op is c.NOT_LITERAL:
            return r.choice([x for x in self.pool if x != chr(av)])
        if op is c.ANY:
            return r.choice(self.pool)
        if op is c.IN:
            return r.choice(self._class(av))
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            hi = lo + 4 if hi is c.MAXREPEAT else min(hi, lo + max(4, (hi - lo) // 3))
            return "".join(self._seq(sub, groups) for _ in range(r.randint(lo, hi)))
        if op is c.SUBPATTERN:
            gid, _, _, sub = av
            text = self._seq(sub, groups)
            if gid:
                groups[gid] = text
            return text
        if op is c.ATOMIC_GROUP:
            return self._seq(av, groups)
        if op is c.BRANCH:
            return self._seq(r.choice(av[1]), groups)
        if op is c.GROUPREF:
            return groups.get(av, "")
        if op is c.GROUPREF_EXISTS:
            gid, yes, no = av
            return self._seq(yes if gid in groups else (no or []), groups)
        return ""  # AT (anchors), ASSERT, ASSERT_NOT: nothing to emit


_URL_HEAD = re.compile(r"^(?:[a-z]+://)?[\w-]+(?:\.[\w-]+)+(?:/[A-Za-z]+)*/")


def _one_secret(rule: Rule, sampler: RegexSampler) -> tuple[str, str] | None:
    """(a match of the rule, its secret) that the rule accepts on a line of its own, or None."""
    for _ in range(TRIES):
        text = sampler.sample(rule.source).strip()
        if not text or "\n" in text:
            continue
        line = f"value: {text} "
        found = [(s, e) for s, e, kind in rule_spans(line) if kind == rule.id]
        if found:
            s, e = found[0]
            # a URL's scheme, host and path words are not secret, the random part after them is
            secret = _URL_HEAD.sub("", line[s:e])
            if len(secret) >= 6 and secret not in ("value:",):
                return line[6:-1], secret
    return None


def _json2(s: str) -> str:
    return json.dumps(json.dumps(s))[1:-1]


#: (shape name, how the match is written into the line, how the secret is spelled there)
SHAPES: tuple[tuple[str, Callable[[str], str], Callable[[str], str]], ...] = (
    ("plain", lambda m: f"2026-12-07T08:00:00Z INFO loaded settings: {m}", lambda s: s),
    ("url", lambda m: f"GET https://elb.example.org/callback?state=1&data={quote(m, safe='')} 200", lambda s: quote(s, safe="")),
    ("json", lambda m: '{"log": "' + _json2(m) + '", "stream": "stderr"}', _json2),
    ("xml", lambda m: f"<Setting><Value>{xml_escape(m)}</Value></Setting>", lambda s: xml_escape(s)),
    ("cli", lambda m: f"+ deploy-tool --set '{m}' --namespace elb", lambda s: s),
    ("header", lambda m: f"> X-Debug-Config: {m}", lambda s: s),
)


def rule_records(seed: int = SEED) -> tuple[list[Record], list[str]]:
    """Records for every rule that yields secrets, and the ids of rules that yielded none."""
    r = random.Random(seed)
    sampler = RegexSampler(r)
    records: list[Record] = []
    barren: list[str] = []
    for rule in RULES:
        found: list[tuple[str, str]] = []
        for pool in (PRINTABLE, WIDE):
            sampler.pool = pool
            found = [x for x in (_one_secret(rule, sampler) for _ in range(SECRETS_PER_RULE)) if x is not None]
            if found:
                break
        if not found:
            barren.append(rule.id)
            continue
        for match, secret in found:
            for shape, write, spell in SHAPES:
                records.append({"kind": rule.id, "shape": shape, "lines": [write(match)], "secrets": [spell(secret)]})
    return records, barren


# --- our own kinds: templates with {S} for the secret ----------------------------------------------

ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"

OWN: tuple[tuple[str, str, str], ...] = (
    # (kind, template, secret alphabet:length)
    ("job_token", "+ curl -H 'Authorization: Bearer elb-{h}.{S}' https://aggregator/v1/ingest", "b64url:43"),
    ("job_token", "token for elb-{h}: elb-{h}.{S}", "b64url:43"),
    ("job_token", "BLAST_LOGS_TOKEN=elb-{h}.{S}", "b64url:43"),
    ("azure_sas", "+ azcopy cp out.tsv 'https://elbstore.blob.core.windows.net/res?sv=2022-11-02&sp=rw&sig={S}'", "b64:43"),
    ("azure_sas", "GET /x?u=https%3A%2F%2Felb.blob.core.windows.net%2Fc%3Fsv%3D2022%26sig%3D{S}", "alnum:40"),
    ("azure_connection_string", "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=elb;AccountKey={S};EndpointSuffix=core.windows.net", "b64:88"),
    ("azure_connection_string", "Endpoint=sb://elb.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey={S}", "b64:44"),
    ("azure_storage_key", '    "value": "{S}"', "b64:88"),
    ("aks_settings", "+ az aks create -g elb-rg -n elb-aks --service-principal 0f6c --client-secret {S}", "alnum:34"),
    ("aks_settings", "    client-key-data: {S}", "b64:120"),
    ("aks_settings", "AZURE_CLIENT_SECRET={S}", "alnum:34"),
    ("elasticblast_settings", "azure-storage-account-key = {S}", "b64:88"),
    ("elasticblast_settings", "ELB_AZURE_CLIENT_SECRET='{S}'", "alnum:34"),
    ("url_encoded", "POST /login body=user%3Dadmin%26password%3D{S}", "alnum:14"),
    ("json_in_json", '{{"log": "{{\\"password\\": \\"{S}\\"}}"}}', "alnum:14"),
    ("xml_element", "<password>{S}</password>", "alnum:14"),
    ("xml_element", "<ClientSecret>{S}</ClientSecret>", "alnum:30"),
    ("cli_curl", "+ curl -sf -u admin:{S} https://elb.example.org/api", "alnum:12"),
    ("cli_curl", "+ curl --user 'deploy:{S}' https://elb.example.org/api", "alnum:12"),
    ("cli_mysql", "+ mysql -h db -u elb -p{S} elb", "alnum:12"),
    ("cli_sshpass", "+ sshpass -p {S} scp out.tsv elb@host:", "alnum:12"),
    ("cli_sshpass", "+ sshpass -p'{S}' ssh elb@host", "alnum:12"),
    ("cli_htpasswd", "+ htpasswd -b -c /etc/nginx/.htpasswd elb {S}", "alnum:12"),
    ("cli_htpasswd", "+ htpasswd -nb elb {S}", "alnum:12"),
    ("vendor_header", "> Ocp-Apim-Subscription-Key: {S}", "hex:32"),
    ("vendor_header", "-H 'x-functions-key: {S}'", "b64url:54"),
    ("password_spaced", "PASSWORD {S}", "alnum:12"),
    ("password_spaced", "machine elb.example.org login elb password {S}", "alnum:12"),
    ("short_bearer", "+ curl -H 'Authorization: Bearer {S}' https://x", "alnum:10"),
    ("short_bearer", "using Bearer {S} for the upload", "alnum:10"),
    ("ruby_hash", '{{"password"=>"{S}"}}', "alnum:14"),
    ("ruby_hash", 'params: {{"user"=>"elb", "api_key"=>"{S}"}}', "alnum:24"),
)
OWN_PER_TEMPLATE = 4


def _draw(r: random.Random, spec: str) -> str:
    alphabet, n = spec.split(":")
    chars = {"alnum": ALNUM, "b64url": B64URL, "hex": "0123456789abcdef", "b64": ALNUM + "+/"}[alphabet]
    while True:
        s = "".join(r.choice(chars) for _ in range(int(n)))
        if alphabet == "b64" and int(n) % 4 == 0:
            s = s[:-2] + "=="
        if any(ch.isdigit() for ch in s) and any(ch.isalpha() for ch in s):
            if alphabet != "b64url" or (any(ch.islower() for ch in s) and any(ch.isupper() for ch in s)):
                return s


def own_records(seed: int = SEED) -> list[Record]:
    r = random.Random(seed + 1)
    records: list[Record] = []
    for kind, template, spec in OWN:
        for _ in range(OWN_PER_TEMPLATE):
            s = _draw(r, spec)
            line = template.format(S=s, h="".join(r.choice("0123456789abcdef") for _ in range(6)))
            records.append({"kind": kind, "shape": "own", "lines": [line], "secrets": [s]})
    return records


def corpus(seed: int = SEED) -> tuple[list[Record], list[str]]:
    records, barren = rule_records(seed)
    return records + own_records(seed), barren


def render(records: list[Record]) -> str:
    return "".join(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n" for rec in records)
