"""The generated rule data and the pieces that apply it: rule selection by keyword, decoded views."""

from __future__ import annotations

import re

import pytest

from shipper import gitleaks_rules
from shipper.redact import Redactor
from shipper.redact_views import decoded_views, to_line
from shipper.secret_rules import KEYWORDS, RULES, entropy, rule_spans, rules_for


def test_the_generated_rules_name_their_source_and_all_compile() -> None:
    assert re.fullmatch(r"npm package [\w.-]+@\d+\.\d+\.\d+, .+\.toml", gitleaks_rules.SOURCE)
    assert len(RULES) >= 200 and len({r.id for r in RULES}) == len(RULES)
    assert all(r.keywords for r in RULES)
    for r in RULES:
        assert r.regex.pattern  # compiles under Python's re
    assert [d[0] for d in gitleaks_rules.DROPPED] == ["pkcs12-file"]


def test_every_keyword_selects_its_rules_even_inside_another() -> None:
    for k in KEYWORDS:
        chosen = {RULES[i].id for i in rules_for(f"xx{k}yy {k}")}
        assert {r.id for r in RULES if k in r.keywords} <= chosen, k


def test_entropy_is_shannon_bits_per_character() -> None:
    assert entropy("aaaa") == 0.0
    assert entropy("abab") == 1.0
    assert entropy("") == 0.0


def test_rules_keep_gitleaks_allowlists() -> None:
    assert rule_spans("aws_key AKIAIOSFODNN7EXAMPLE") == []  # allowlisted: .+EXAMPLE$
    found = rule_spans("export GITHUB_TOKEN=ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5")
    assert ("github-pat" in {k for _, _, k in found})


@pytest.mark.parametrize(
    ("line", "view"),
    [
        ("a%3Db%26sig%3Dx", "a=b&sig=x"),
        ('{"log": "{\\"password\\": \\"x\\"}"}', '{"log": "{"password": "x"}"}'),
        ("<p>&lt;x&gt;&amp;&#39;</p>", " <x>&' "),
    ],
)
def test_a_view_undoes_escapes_and_maps_back_to_the_line(line: str, view: str) -> None:
    text, origin = decoded_views(line)[-1]
    assert text == view
    assert len(origin) == len(text) + 1 and origin[0] == 0 and origin[-1] == len(line)
    start, end = to_line(origin, 0, len(text))
    assert (start, end) == (0, len(line))


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ('{"password"=>"S3cretVal9"}', '{"password"=>"[REDACTED:password]"}'),
        ("+ curl -u admin:Hx8sKq2 https://x", "+ curl -u [REDACTED:password] https://x"),
        ("+ mysql -uroot -pHx8sKq2zz db", "+ mysql -uroot -p[REDACTED:password] db"),
        ("+ sshpass -pHx8sKq2 ssh h", "+ sshpass -p[REDACTED:password] ssh h"),
        ("+ htpasswd -b /etc/htp user Hx8sKq2 2>/dev/null", "+ htpasswd -b /etc/htp user [REDACTED:password] 2>/dev/null"),
        ("+ htpasswd -nb user Hx8sKq2", "+ htpasswd -nb user [REDACTED:password]"),
        ("Ocp-Apim-Subscription-Key: 0123456789abcdef0123456789abcdef", "Ocp-Apim-Subscription-Key: [REDACTED:api_key]"),
        ("PASSWORD Hx8sKq2x", "PASSWORD [REDACTED:password]"),
        ('curl -H "Bearer ab12cd"', 'curl -H "Bearer [REDACTED:bearer_token]"'),
        ("<password>hunter2</password>", "<password>[REDACTED:password]</password>"),
        ("POST body=user%3Dx%26password%3DHx8sKq2x", "POST body=user%3Dx%26password%3D[REDACTED:password]"),
        ('{"msg": "{\\"password\\": \\"Hx8sKq2\\"}"}', '{"msg": "{\\"password\\": \\"[REDACTED:password]\\"}"}'),
        ("    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=", "    client-key-data: [REDACTED:access_key]"),
        ("Warning: password for user root is missing", "Warning: password for user root is missing"),
        ("token_type=Bearer expires_in=3599", "token_type=Bearer expires_in=3599"),
    ],
)
def test_issue_19_bypasses_are_closed(line: str, redacted: str) -> None:
    assert Redactor().redact(line) == redacted
