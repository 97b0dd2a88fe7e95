"""Secret redaction: every kind in realistic log lines, counters, PEM blocks, and no false positives.

All secrets here are made up or are the vendors' documented examples (AWS's AKIAIOSFODNN7EXAMPLE,
the jwt.io sample, Azurite's published development key).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.redact import (
    _DEFAULT,
    MAX_PEM_BLOCK_LINES,
    OWN_NEEDLES,
    PATTERNS,
    Redactor,
    SecretPattern,
    marker,
    might_hold_secret,
    needle_positions,
)
from shipper.redact import _compile as compile_table
from shipper.redact_views import decoded_views
from shipper.sanitise import Sanitiser

DATA = Path(__file__).resolve().parents[1] / "data"

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2"
    "MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GH = "ghp_1234567890abcdefghijklmnopqrstuvwxyz"
R = marker

# (line as logged, line after redaction, kinds counted)
CASES: list[tuple[str, str, dict[str, int]]] = [
    # Authorization headers: curl -H echoes (set -x), curl -v, JSON dumps of request headers.
    (
        "+ curl -sS -H 'Authorization: Bearer abcdef0123456789abcdef' https://elb-api/v1/jobs",
        f"+ curl -sS -H 'Authorization: Bearer {R('authorization')}' https://elb-api/v1/jobs",
        {"authorization": 1},
    ),
    (
        "> Authorization: Basic ZWxiOmh1bnRlcjI=",
        f"> Authorization: Basic {R('authorization')}",
        {"authorization": 1},
    ),
    (
        f'{{"headers": {{"Authorization": "Bearer {JWT}", "Accept": "application/json"}}}}',
        f'{{"headers": {{"Authorization": "Bearer {R("authorization")}", "Accept": "application/json"}}}}',
        {"authorization": 1},
    ),
    (
        "authorization=SharedKey elbstorage:c2lnbmF0dXJlLW9mLXRoZS1yZXF1ZXN0",
        f"authorization=SharedKey {R('authorization')}",
        {"authorization": 1},
    ),
    (
        "WARNING retrying with bearer 0123456789abcdefABCDEF.xyz after 401",
        f"WARNING retrying with bearer {R('bearer_token')} after 401",
        {"bearer_token": 1},
    ),
    # JWTs, bare and in assignments.
    (f"decoded claims of {JWT}: sub=1234567890", f"decoded claims of {R('jwt')}: sub=1234567890", {"jwt": 1}),
    (f"id_token={JWT}&state=af0ifjsldkj", f"id_token={R('jwt')}&state=af0ifjsldkj", {"jwt": 1}),
    # AWS.
    (
        "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        f"export AWS_ACCESS_KEY_ID={R('aws_access_key_id')}",
        {"aws_access_key_id": 1},
    ),
    (
        "ASIAY34FZKBOKMUTVV7A is not authorized",
        f"{R('aws_access_key_id')} is not authorized",
        {"aws_access_key_id": 1},
    ),
    (
        f"aws_secret_access_key = {AWS_SECRET}",
        f"aws_secret_access_key = {R('aws_secret_key')}",
        {"aws_secret_key": 1},
    ),
    (
        f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
        f"AWS_SECRET_ACCESS_KEY={R('aws_secret_key')}",
        {"aws_secret_key": 1},
    ),
    (
        f'    "SecretAccessKey": "{AWS_SECRET}",',
        f'    "SecretAccessKey": "{R("aws_secret_key")}",',
        {"aws_secret_key": 1},
    ),
    (
        "AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD",
        f"AWS_SESSION_TOKEN={R('aws_secret_key')}",
        {"aws_secret_key": 1},
    ),
    (
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20260101"
        "&X-Amz-Signature=0123456789abcdef0123456789abcdef",
        f"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={R('aws_access_key_id')}%2F20260101"
        f"&X-Amz-Signature={R('url_signature')}",
        {"aws_access_key_id": 1, "url_signature": 1},
    ),
    # GitHub, every prefix.
    *[
        (
            f"remote: Invalid username or token {p}_1234567890abcdefghijklmnopqrstuvwxyz.",
            f"remote: Invalid username or token {R('github_token')}.",
            {"github_token": 1},
        )
        for p in ("ghp", "gho", "ghu", "ghs", "ghr")
    ],
    (
        "using github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV for the clone",
        f"using {R('github_token')} for the clone",
        {"github_token": 1},
    ),
    (f"export GITHUB_TOKEN={GH}", f"export GITHUB_TOKEN={R('github_token')}", {"github_token": 1}),
    # Slack.
    (
        "SLACK_BOT_TOKEN=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        f"SLACK_BOT_TOKEN={R('slack_token')}",
        {"slack_token": 1},
    ),
    ("slack: xoxp-1234567890-abcdefghij rejected", f"slack: {R('slack_token')} rejected", {"slack_token": 1}),
    (
        "curl -X POST https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX -d @msg.json",
        f"curl -X POST https://hooks.slack.com/services/{R('slack_webhook')} -d @msg.json",
        {"slack_webhook": 1},
    ),
    # Azure: SAS (the URL stays readable), account keys, connection strings.
    (
        "INFO: azcopy copy 'https://elbstorage.blob.core.windows.net/blast-db/core_nt?sv=2023-11-03&ss=b&srt=sco"
        "&sp=rl&se=2026-11-28T00:00:00Z&st=2026-11-27T00:00:00Z&spr=https&sig=Xy7%2BAbC%2FdEf%3D' /blast/blastdb",
        "INFO: azcopy copy 'https://elbstorage.blob.core.windows.net/blast-db/core_nt?sv=2023-11-03&ss=b&srt=sco"
        f"&sp=rl&se=2026-11-28T00:00:00Z&st=2026-11-27T00:00:00Z&spr=https&sig={R('azure_sas')}' /blast/blastdb",
        {"azure_sas": 1},
    ),
    (
        "failed to perform copy command due to error: https://elb.blob.core.windows.net/r?sig=abc%3D&se=2026&sv=2023 "
        "RESPONSE 403: AuthenticationFailed",
        f"failed to perform copy command due to error: https://elb.blob.core.windows.net/r?sig={R('azure_sas')}"
        "&se=2026&sv=2023 RESPONSE 403: AuthenticationFailed",
        {"azure_sas": 1},
    ),
    (
        f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        "AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={R('azure_key')};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        {"azure_key": 1},
    ),
    (
        "Endpoint=sb://elb.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=abc123def456ghi789jkl012mno345pqr678stu9vwx=",
        "Endpoint=sb://elb.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={R('azure_key')}",
        {"azure_key": 1},
    ),
    (
        "BlobEndpoint=https://elb.blob.core.windows.net/;SharedAccessSignature=sv=2023-11-03&ss=b&sig=AbC%3D",
        f"BlobEndpoint=https://elb.blob.core.windows.net/;SharedAccessSignature=sv=2023-11-03&ss=b&sig={R('azure_sas')}",
        {"azure_sas": 1},
    ),
    (
        f"+ az storage blob list --account-name elbstorage --account-key {AZURITE_KEY} -c results",
        f"+ az storage blob list --account-name elbstorage --account-key {R('azure_key')} -c results",
        {"azure_key": 1},
    ),
    # URL userinfo.
    (
        "Cloning https://elb:s3cr3t-pw@git.example.org/ncbi/elastic-blast.git",
        f"Cloning https://elb:{R('url_userinfo')}@git.example.org/ncbi/elastic-blast.git",
        {"url_userinfo": 1},
    ),
    (
        "DATABASE_URL=postgresql://elb:hunter2@db.internal:5432/blast",
        f"DATABASE_URL=postgresql://elb:{R('url_userinfo')}@db.internal:5432/blast",
        {"url_userinfo": 1},
    ),
    (
        f"git clone https://x-access-token:{GH}@github.com/ncbi/elastic-blast",
        f"git clone https://x-access-token:{R('github_token')}@github.com/ncbi/elastic-blast",
        {"github_token": 1},
    ),
    # Generic key/value forms: env dumps, config files, JSON, YAML, URL queries, CLI flags.
    ("DB_PASSWORD=hunter2", f"DB_PASSWORD={R('password')}", {"password": 1}),
    (
        "mysql --user=root --password=hunter2 blastdb",
        f"mysql --user=root --password={R('password')} blastdb",
        {"password": 1},
    ),
    (
        "+ tool --password 'correct horse' --verbose",
        f"+ tool --password '{R('password')}' --verbose",
        {"password": 1},
    ),
    ("Server=db;Uid=elb;Pwd=Tr0ub4dor&3;", f"Server=db;Uid=elb;Pwd={R('password')}&3;", {"password": 1}),
    ("passwd: s3cr3t!", f"passwd: {R('password')}", {"password": 1}),
    ("  passphrase = 'my long pass phrase'", f"  passphrase = '{R('password')}'", {"password": 1}),
    (
        '{"user": "elb", "password": "p\\"w d", "port": 5432}',
        f'{{"user": "elb", "password": "{R("password")}", "port": 5432}}',
        {"password": 1},
    ),
    (
        "{'password': 'hunter2', 'db': 'core_nt'}",
        f"{{'password': '{R('password')}', 'db': 'core_nt'}}",
        {"password": 1},
    ),
    ("password: correct horse battery staple", f"password: {R('password')}", {"password": 1}),
    ("AZURE_CLIENT_SECRET=x~8Q~abcdefghijklmnop", f"AZURE_CLIENT_SECRET={R('secret')}", {"secret": 1}),
    ('  "client_secret": "x~8Q~abc.def",', f'  "client_secret": "{R("secret")}",', {"secret": 1}),
    ("--client-secret s3cr3tval --tenant t", f"--client-secret {R('secret')} --tenant t", {"secret": 1}),
    (
        "export BLAST_LOGS_TOKEN=elb-123.0123456789abcdef_ghij",
        f"export BLAST_LOGS_TOKEN={R('token')}",
        {"token": 1},
    ),
    (
        "GET /v1/jobs?access_token=abc123&page=2 HTTP/1.1",
        f"GET /v1/jobs?access_token={R('token')}&page=2 HTTP/1.1",
        {"token": 1},
    ),
    ("https://api/x?page=1&token=abc123def", f"https://api/x?page=1&token={R('token')}", {"token": 1}),
    ("token: abc123def456", f"token: {R('token')}", {"token": 1}),
    ("refresh_token: 'abc'", f"refresh_token: '{R('token')}'", {"token": 1}),
    (
        "//registry.npmjs.org/:_authToken=npm_abcdef123456",
        f"//registry.npmjs.org/:_authToken={R('token')}",
        {"token": 1},
    ),
    ("X-Api-Key: 0123456789abcdef", f"X-Api-Key: {R('api_key')}", {"api_key": 1}),
    (
        '+ curl -H "x-api-key: k-1234" https://x',
        f'+ curl -H "x-api-key: {R("api_key")}" https://x',
        {"api_key": 1},
    ),
    ("api_key=0123456789abcdef", f"api_key={R('api_key')}", {"api_key": 1}),
    ("apikey: 9f8e7d6c5b4a", f"apikey: {R('api_key')}", {"api_key": 1}),
    ("NCBI_API-KEY=9f8e7d6c5b4a3f2e", f"NCBI_API-KEY={R('api_key')}", {"api_key": 1}),
    ("SECRET_KEY=django-insecure-abc", f"SECRET_KEY={R('secret')}", {"secret": 1}),
    ("s3 access_key: AK0123456789", f"s3 access_key: {R('access_key')}", {"access_key": 1}),
    # A JSON service-account key: the PEM inside one line.
    (
        '{"private_key_id": "abc", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n'
        '-----END PRIVATE KEY-----\\n", "client_email": "elb@proj.iam.gserviceaccount.com"}',
        f'{{"private_key_id": "abc", "private_key": "{R("private_key")}\\n", '
        '"client_email": "elb@proj.iam.gserviceaccount.com"}',
        {"private_key": 1},
    ),
    # Several secrets on one line.
    (
        f"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY={AWS_SECRET} token={GH}",
        f"AWS_ACCESS_KEY_ID={R('aws_access_key_id')} AWS_SECRET_ACCESS_KEY={R('aws_secret_key')} token={R('github_token')}",
        {"aws_access_key_id": 1, "aws_secret_key": 1, "github_token": 1},
    ),
    # Forms found missing by tests/shipper/test_redaction_corpus.py (added with the fix in shipper/redact.py).
    (
        "GET https://www.googleapis.com/storage/v1/b/elb/o?key=AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW 403",
        f"GET https://www.googleapis.com/storage/v1/b/elb/o?key={R('google_api_key')} 403",
        {"google_api_key": 1},
    ),
    (
        '{"auths": {"elbregistry.azurecr.io": {"auth": "ZWxiOmh1bnRlcjI="}}}',
        f'{{"auths": {{"elbregistry.azurecr.io": {{"auth": "{R("registry_auth")}"}}}}}}',
        {"registry_auth": 1},
    ),
    (
        "+ sshpass -p 'hunter2x' scp results.tar.gz elb@10.0.0.5:/data/",
        f"+ sshpass -p '{R('password')}' scp results.tar.gz elb@10.0.0.5:/data/",
        {"password": 1},
    ),
    (
        "+ az login --service-principal -u 0b9f0c4e -p s3cr3t.Value~1 --tenant 72f988bf",
        f"+ az login --service-principal -u 0b9f0c4e -p {R('password')} --tenant 72f988bf",
        {"password": 1},
    ),
    (
        "+ openssl pkcs12 -export -in c.pem -passout pass:hunter2x -out c.pfx",
        f"+ openssl pkcs12 -export -in c.pem -passout pass:{R('password')} -out c.pfx",
        {"password": 1},
    ),
    (
        f"+ aws configure set aws_secret_access_key {AWS_SECRET}",
        f"+ aws configure set aws_secret_access_key {R('aws_secret_key')}",
        {"aws_secret_key": 1},
    ),
    # the shipper's own job token, however it is printed (issue 19)
    (
        "+ echo elb-2f3a9c.q7Rk2LmX9vB4nT6wYc1Zp8Hs3Jd5Fg0Ae-Uo_Ki7Ny2",
        f"+ echo elb-2f3a9c.{R('job_token')}",
        {"job_token": 1},
    ),
]


@pytest.mark.parametrize(("line", "redacted", "kinds"), CASES, ids=[c[0][:50] for c in CASES])
def test_secret_redacted(line: str, redacted: str, kinds: dict[str, int]) -> None:
    r = Redactor()
    assert r.redact(line) == redacted
    assert r.counts == kinds
    # The same through the sanitiser, one line and in bulk.
    s = Sanitiser()
    assert s.line(line.encode()) == redacted
    assert s.lines([b"before", line.encode(), b"after"]) == ["before", redacted, "after"]
    assert s.redactions == {k: 2 * n for k, n in kinds.items()}


@pytest.mark.parametrize(("line", "redacted", "kinds"), CASES, ids=[c[0][:50] for c in CASES])
def test_redaction_is_idempotent(line: str, redacted: str, kinds: dict[str, int]) -> None:
    r = Redactor()
    assert r.redact(redacted) == redacted
    assert not r.counts


def test_every_kind_in_the_table_is_exercised() -> None:
    counted: set[str] = set()
    for _, _, kinds in CASES:
        counted.update(kinds)
    assert {p.kind for p in PATTERNS} - {"password"} <= counted
    assert {"password", "secret", "token", "api_key", "private_key"} <= counted


@pytest.mark.parametrize(("line", "redacted", "kinds"), CASES, ids=[c[0][:50] for c in CASES])
def test_pre_check_lets_every_secret_through(line: str, redacted: str, kinds: dict[str, int]) -> None:
    assert might_hold_secret(line)
    assert needle_positions(line.encode())


def test_counters_per_kind_accumulate() -> None:
    r = Redactor()
    for line in ("password=a1", "password=b2", "token=c3c3c3", f"key {JWT}", "nothing"):
        r.redact(line)
    assert r.counts == {"password": 2, "token": 1, "jwt": 1}


def test_a_custom_pattern_table_is_data() -> None:
    r = Redactor([SecretPattern("ticket", r"\bTICKET-(?P<v>[0-9]{4,})")])
    assert r.redact("see TICKET-123456 and password=x") == f"see TICKET-{R('ticket')} and password=x"
    assert r.counts == {"ticket": 1}


# --- PEM blocks -----------------------------------------------------------------------------------

PEM = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "Proc-Type: 4,ENCRYPTED",
    "DEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF",
    "",
    "MIIEpAIBAAKCAQEA1c3Fh0wVvL1r3R7C8c0u0m4tH6pC1cX3yK0bq8r3Hk8mV2bE",
    "q3Vf5Q2xj0pQ7z8c9wF2gkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDVzcWH",
    "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789+/==",
    "-----END RSA PRIVATE KEY-----",
]


def test_every_line_of_a_private_key_block_disappears() -> None:
    lines = ["+ cat /secrets/id_rsa", *PEM, "+ ssh-keygen -y -f /secrets/id_rsa", "Query= query_1"]
    r = Redactor()
    out = [r.redact(line) for line in lines]
    assert out == [lines[0], *[R("private_key")] * len(PEM), lines[-2], lines[-1]]
    assert r.counts == {"private_key": 1}
    assert not r.in_private_key
    # In bulk, split across batches anywhere: the state carries over.
    for cut in range(len(lines) + 1):
        s = Sanitiser()
        raws = [line.encode() for line in lines]
        assert s.lines(raws[:cut]) + s.lines(raws[cut:]) == out
        assert s.redactions == {"private_key": 1}


@pytest.mark.parametrize(
    "begin",
    [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
    ],
)
def test_pem_kinds(begin: str) -> None:
    end = begin.replace("BEGIN", "END")
    r = Redactor()
    out = [r.redact(x) for x in ["key:", begin, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU=", end, "done"]]
    assert out == ["key:", R("private_key"), R("private_key"), R("private_key"), "done"]


def test_text_around_the_markers_on_begin_and_end_lines_is_kept() -> None:
    r = Redactor()
    out = [
        r.redact(x)
        for x in [
            "key is: -----BEGIN PRIVATE KEY-----MIIE",
            "abc",
            "xyz-----END PRIVATE KEY----- ok password=p4ss",
        ]
    ]
    assert out == [
        f"key is: {R('private_key')}",
        R("private_key"),
        f"{R('private_key')} ok password={R('password')}",
    ]
    assert r.counts == {"private_key": 1, "password": 1}


def test_public_keys_and_certificates_are_not_redacted() -> None:
    lines = [
        "-----BEGIN CERTIFICATE-----",
        "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ",
        "-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----",
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
        "-----END PUBLIC KEY-----",
    ]
    r = Redactor()
    assert [r.redact(x) for x in lines] == lines


def test_an_unterminated_block_stops_hiding_after_a_bound() -> None:
    r = Redactor()
    assert r.redact("-----BEGIN PRIVATE KEY-----") == R("private_key")
    hidden = [r.redact("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=") for _ in range(MAX_PEM_BLOCK_LINES)]
    assert set(hidden) == {R("private_key")}
    assert r.redact("Query= query_1 (the log went on)") == "Query= query_1 (the log went on)"
    assert not r.in_private_key


# --- no false positives ---------------------------------------------------------------------------

ORDINARY = [
    "The token was expired; the tokenizer will request a new token on the next call.",
    "invalid token: the token was expired",
    "Error: invalid secret: not found in vault",
    "tokens=1024 max_tokens=4096 tokenizer=bpe token_type=Bearer",
    "Use --token-file or --password-file to pass credentials",
    "export BLAST_LOGS_TOKEN_FILE=/var/run/secrets/blast-logs/token",
    "PWD=/work/main",
    "OLDPWD=/",
    "secretName: blast-logs-token",
    "secretKeyRef: {name: blast-logs-token, key: token}",
    '  File "/usr/lib/python3/site-packages/azure/identity/_credentials/token.py", line 12, in get_token',
    "    access_token = credential_helper.get_token(scope)",
    "    password = os.environ['DB_PASSWORD']",
    "    token = None",
    "password=",
    "password: ********",
    "password=$DB_PASSWORD",
    "password=${DB_PASSWORD}",
    "password=<your password>",
    "Authorization: REDACTED",
    "'Authorization': 'REDACTED'",
    "Authorization failed for user elb-runner (code 403)",
    "https://elb.blob.core.windows.net/c/b?se=2026-11-28&sig=-REDACTED-&sp=r",
    "https://elb.blob.core.windows.net/c/b?se=REDACTED&sig=REDACTED",
    "Bearer tokens are accepted on /v1/ingest.",
    "Basic Local Alignment Search Tool, basic configuration loaded",
    "Password for 'https://elb@dev.azure.com':",
    'psql: FATAL:  password authentication failed for user "elb"',
    "git@github.com:ncbi/elastic-blast.git",
    "Contact blast-help@ncbi.nlm.nih.gov for help.",
    "elbacr.azurecr.io/ncbi/elb@sha256:4f6a3e0bd2c1a9e8f7d6c5b4a3928171605f4e3d2c1b0a9f8e7d6c5b4a392817",
    "monkey=3 keyboard=us turkey_count=12 api_key_id=7",
    "signature=verified keyring=/etc/apt/keyrings/microsoft.gpg",
    "ACCAGTTGCAAGTCGATGCA AKIAGATTACA ASIAGTCC",
    "Query  1    AKIAQRSTVWYAKIAQRSTVWYAKIAQRSTVWYAKIAQRSTVWYAKIAQRSTVWYAKIAQR  60",
    "base64 id: dGhpc2lzYWdlbmVpZAo= kmer YWJjZGVmZ2hpams=",
    "9925c313df19489eb71b8c7cc9f9f2049d9acfcbe80efaeb9608dc892b91447d  batch_000.out",
    "run 6fa459ea-ee8a-3ca4-894e-db77e160355e finished",
    "Private key handling: keys live in Key Vault elb-kv-prod, never on disk.",
    "${TOKEN:-x}",
]


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_text_is_not_redacted(line: str) -> None:
    r = Redactor()
    assert r.redact(line) == line
    assert not r.counts


def test_ordinary_corpus_files_are_not_redacted() -> None:
    r = Redactor()
    for path in sorted((DATA / "ordinary").glob("*.log")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            assert r.redact(line) == line, (path.name, line)
    assert not r.counts


# --- properties -----------------------------------------------------------------------------------

_PIECES = [
    "password", "token", "secret", "api_key", "AccountKey", "sig", "Authorization", "Bearer", "PWD",
    "=", ": ", '"', "'", "&", "?", ";", " ", "\t", "-", "--", "_", "@", "://", "/", ".",
    "abc123", "hunter2", "x" * 20, "eyJabcdefghij.eyJabcdefghij.sig", "AKIAIOSFODNN7EXAMPLE", GH,
    "xoxb-1234567890ab", "hooks.slack.com/services/T0/B0/X", "REDACTED", "***", "[REDACTED:x]", "€", "(", "[",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_PIECES), max_size=10).map("".join), max_size=12))
def test_redaction_properties(lines: list[str]) -> None:
    one = Redactor()
    outs = [one.redact(line) for line in lines]
    for line, out in zip(lines, outs, strict=True):
        assert "\n" not in out
        if out != line:
            assert might_hold_secret(line), line  # the pre-check never hides a secret
            assert "[REDACTED:" in out
    # Bulk over the joined raw bytes gives the same lines and counts.
    bulk = Redactor()
    texts = list(lines)
    assert bulk.redact_batch(texts, "\n".join(lines).encode()) == outs
    assert bulk.counts == one.counts
    # Redacting again never undoes a redaction (real lines are idempotent: see CASES).
    again = Redactor()
    for out in outs:
        assert again.redact(out).count("[REDACTED:") >= out.count("[REDACTED:")


def test_progress_bars_are_not_base64_padding() -> None:
    """`==` is the needle of a storage key's padding: after a base64 character only, so the bars
    of get-blastdb and azcopy are not run through the whole table; a key still is, and so is a
    needle a bar's `==` would have hidden."""
    for bar in (b"[==========] 100% core_nt.389.nsq", b"====", b"[=>  ] 12%", b"x ==== y"):
        assert needle_positions(bar) == []
    key = b"Zm9v" * 21 + b"YQ=="
    assert needle_positions(key) and Redactor().redact(key.decode()) != key.decode()
    assert needle_positions(b"[===s.abc") and needle_positions(b"[==s.abc")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*_PIECES, *(c[0] for c in CASES)]), max_size=8).map("".join))
def test_a_line_is_searched_only_with_the_patterns_its_needles_allow(line: str) -> None:
    """A line is searched with the patterns whose `needles` it holds: every match of the whole
    table holds a needle of its pattern, so the subset finds exactly the whole table's matches."""
    whole = compile_table(PATTERNS)
    for text in (line, *(view for view, _ in decoded_views(line))):
        found = [(m.span(), whole.groups[m.lastindex or 0][0]) for m in whole.regex.finditer(text)]
        for (start, end), pattern in found:
            assert any(n in text[start:end].lower() for n in pattern.needles), (text, pattern.kind)
        subset = _DEFAULT.for_line(text)
        assert found == ([(m.span(), subset.groups[m.lastindex or 0][0]) for m in subset.regex.finditer(text)]
                         if subset is not None else [])


def test_every_pattern_names_needles_of_the_pre_check() -> None:
    assert all(p.needles and set(p.needles) <= set(OWN_NEEDLES) for p in PATTERNS)
