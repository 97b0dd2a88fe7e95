"""Build the redaction corpus: secrets in log lines the way tools print them, and ordinary lines.

    .venv/bin/python bench/make_redaction_corpus.py          # rewrite tests/data/*-corpus*
    .venv/bin/python bench/make_redaction_corpus.py --check  # exit 1 if the synthetic files differ

Writes, under tests/data/:
- `secrets-corpus.jsonl`: one record per excerpt, `{"kind", "lines": [...], "secrets": [...]}`; each
  secret value is recorded apart from the lines so recall can be measured (is the value still there?).
- `ordinary-corpus-synthetic.log`: azcopy progress, `set -x` traces, Python tracebacks, Kubernetes
  events, env dumps, paths, sequence ids, hashes and UUIDs that are not secrets.
- `rules-corpus.jsonl`: secrets drawn from every rule of the maintained rule set and our own kinds,
  in every shape logs carry them (bench/make_rules_corpus.py).
- `ordinary-corpus-blast.log`: real output and errors of the installed `makeblastdb`, `blastn` and
  `blastdbcmd` on a seeded random database (their timings and dates vary between runs).

Every value is random from a fixed seed, so the synthetic files are byte-for-byte reproducible;
tests/shipper/test_redaction_corpus.py checks that. All secrets are made up.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import shutil
import string
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import make_rules_corpus

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
SECRETS_FILE = DATA / "secrets-corpus.jsonl"
SYNTHETIC_FILE = DATA / "ordinary-corpus-synthetic.log"
BLAST_FILE = DATA / "ordinary-corpus-blast.log"
RULES_FILE = DATA / "rules-corpus.jsonl"
SEED = 20261127
RECORDS_PER_KIND = 22
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B32 = string.ascii_uppercase + "234567"
HEX = "0123456789abcdef"

Record = dict[str, object]


class Gen:
    """Random values of realistic shapes from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def pick(self, items: list[str] | tuple[str, ...]) -> str:
        return self.r.choice(items)

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.r.randbytes(nbytes)).decode()

    def b64url(self, nbytes: int) -> str:
        return base64.urlsafe_b64encode(self.r.randbytes(nbytes)).rstrip(b"=").decode()

    def hexs(self, n: int) -> str:
        return self.chars(HEX, n)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def account(self) -> str:
        return self.pick(["elbstorage", "blastresults", "ncbielbprod", "elbdata01", "stelbjobs"]) + self.chars("0123456789", 2)

    def job(self) -> str:
        return f"elb-{self.hexs(6)}"

    def pod(self) -> str:
        return f"blastn-batch-core-nt-job-{self.r.randint(0, 99)}-{self.chars(string.ascii_lowercase + string.digits, 5)}"

    def ts(self) -> str:
        return (f"2026-11-{self.r.randint(1, 28):02d}T{self.r.randint(0, 23):02d}:{self.r.randint(0, 59):02d}:"
                f"{self.r.randint(0, 59):02d}.{self.r.randint(0, 999999):06d}Z")

    def password(self) -> str:
        kind = self.r.randint(0, 3)
        if kind == 0:
            return self.chars(ALNUM, self.r.randint(12, 24))
        if kind == 1:
            return self.chars(ALNUM + "!#%^*_+-.", self.r.randint(14, 28))
        if kind == 2:
            words = ["Correct", "Horse", "Battery", "Staple", "Blue", "Falcon", "River", "Quartz"]
            return "".join(self.r.sample(words, 3)) + str(self.r.randint(10, 99)) + self.pick(["!", "#", "%", ""])
        return self.chars(string.ascii_lowercase + string.digits, 20)

    def sas(self) -> tuple[str, str]:
        """An Azure SAS query string and its signature (URL-encoded base64, as azcopy prints it)."""
        sig = base64.b64encode(self.r.randbytes(32)).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        q = (f"sv=2022-11-02&ss=b&srt=sco&sp={self.pick(['rl', 'rwdlac', 'racwdl', 'r'])}"
             f"&se=2026-12-{self.r.randint(1, 28):02d}T00:00:00Z&st=2026-11-01T00:00:00Z&spr=https&sig={sig}")
        if self.r.random() < 0.3:
            q = f"sp=r&st=2026-11-27T10:00:00Z&se=2026-11-28T18:00:00Z&spr=https&sv=2022-11-02&sr=c&sig={sig}"
        return q, sig


# --- secrets -------------------------------------------------------------------------------------


def k_azure_sas(g: Gen) -> Record:
    q, sig = g.sas()
    acct, job = g.account(), g.job()
    url = f"https://{acct}.blob.core.windows.net/results/{job}?{q}"
    lines = g.pick([
        f"+ azcopy cp /result/batch_{g.r.randint(0, 99):03d}.out '{url}'",
        f"INFO: azcopy: A newer version 10.27.1 is available to download\nINFO: Scanning...\nfailed to perform copy command due to error: cannot transfer to {url}: 403 This request is not authorized",
        f"RESPONSE Status: 403 Server failed to authenticate the request.\n   PUT {url.replace('?', '/batch_1.out?')}",
        f"Downloading https://{acct}.blob.core.windows.net/blast-db/core_nt/core_nt.00.tar.gz?{q} to /blast/blastdb",
        f'{{"level":"error","msg":"blob upload failed","url":"{url}","status":403}}',
        f"ERROR: Failed to access {url}: AuthenticationFailed",
        f"export ELB_RESULTS_SAS_URL='{url}'",
        f"+ wget -q -O core_nt.tar.gz 'https://{acct}.blob.core.windows.net/db/core_nt.tar.gz?{q}'",
    ]).split("\n")
    return {"kind": "azure_sas", "lines": lines, "secrets": [sig]}


def k_azure_connection_string(g: Gen) -> Record:
    key = g.b64(64)
    acct = g.account()
    cs = f"DefaultEndpointsProtocol=https;AccountName={acct};AccountKey={key};EndpointSuffix=core.windows.net"
    lines = g.pick([
        f"AZURE_STORAGE_CONNECTION_STRING={cs}",
        f"+ export AZURE_STORAGE_CONNECTION_STRING='{cs}'",
        f'  "connectionString": "{cs}",',
        f"ValueError: Invalid connection string: {cs}",
        f"az storage blob upload --connection-string \"{cs}\" -c results -f batch_7.out -n batch_7.out",
        f"Using storage account {acct} with key {key[:4]}... from AccountKey={key}",
        f"2026-11-27 10:01:02,345 DEBUG azure storage client created from conn_str={cs}",
    ]).split("\n")
    return {"kind": "azure_connection_string", "lines": lines, "secrets": [key]}


def k_azure_servicebus(g: Gen) -> Record:
    key = g.b64(32)
    ns = g.pick(["elb-events", "ncbi-bus", "elbjobs"])
    cs = f"Endpoint=sb://{ns}.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={key}"
    lines = g.pick([
        f"SERVICEBUS_CONNECTION_STR={cs}",
        f"azure.servicebus.exceptions.ServiceBusAuthenticationError: Unauthorized access for {cs}",
        f'{{"EventHubConnection": "{cs};EntityPath=job-events"}}',
    ]).split("\n")
    return {"kind": "azure_servicebus_key", "lines": lines, "secrets": [key]}


def k_aws_access_key(g: Gen) -> Record:
    akid = g.pick(["AKIA", "ASIA"]) + g.chars(B32, 16)
    lines = g.pick([
        f"AWS_ACCESS_KEY_ID={akid}",
        f"aws_access_key_id = {akid}",
        f"botocore.exceptions.ClientError: An error occurred (InvalidAccessKeyId) when calling the ListObjectsV2 operation: The AWS Access Key Id {akid} you provided does not exist in our records.",
        f"+ aws configure set aws_access_key_id {akid}",
        f'{{"AccessKeyId": "{akid}", "Expiration": "2026-11-27T12:00:00Z"}}',
        f"Credential={akid}/20261127/us-east-1/s3/aws4_request",
    ]).split("\n")
    return {"kind": "aws_access_key_id", "lines": lines, "secrets": [akid]}


def k_aws_secret_key(g: Gen) -> Record:
    secret = g.chars(B64, 40)
    lines = g.pick([
        f"AWS_SECRET_ACCESS_KEY={secret}",
        f"aws_secret_access_key = {secret}",
        f"+ export AWS_SECRET_ACCESS_KEY={secret}",
        f'    "SecretAccessKey": "{secret}",',
        f"+ aws configure set aws_secret_access_key {secret}",
        f"AWS_SESSION_TOKEN={g.b64(96)}\nAWS_SECRET_ACCESS_KEY={secret}",
    ]).split("\n")
    secrets = [secret] + ([lines[0].split("=", 1)[1]] if lines[0].startswith("AWS_SESSION_TOKEN=") else [])
    return {"kind": "aws_secret_access_key", "lines": lines, "secrets": secrets}


def k_github(g: Gen) -> Record:
    tok = g.pick(["ghp_", "gho_", "ghs_", "ghu_"]) + g.chars(ALNUM, 36)
    if g.r.random() < 0.25:
        tok = "github_pat_" + g.chars(ALNUM, 22) + "_" + g.chars(ALNUM, 59)
    lines = g.pick([
        f"+ git clone https://x-access-token:{tok}@github.com/ncbi/elastic-blast.git",
        f"GITHUB_TOKEN={tok}",
        f"fatal: could not read Password for 'https://{tok}@github.com': terminal prompts disabled",
        f"+ curl -sSf -H 'Authorization: token {tok}' https://api.github.com/repos/ncbi/elastic-blast/releases/latest",
        f"remote: Invalid username or password for token {tok}",
    ]).split("\n")
    return {"kind": "github_token", "lines": lines, "secrets": [tok]}


def k_slack(g: Gen) -> Record:
    if g.r.random() < 0.5:
        secret = f"T{g.chars(B32, 8)}/B{g.chars(B32, 10)}/{g.chars(ALNUM, 24)}"
        url = f"https://hooks.slack.com/services/{secret}"
        lines = g.pick([
            f"+ curl -X POST -H 'Content-type: application/json' --data '{{\"text\":\"job done\"}}' {url}",
            f"SLACK_WEBHOOK_URL={url}",
            f"requests.exceptions.HTTPError: 404 Client Error: Not Found for url: {url}",
        ])
        return {"kind": "slack_webhook", "lines": [lines], "secrets": [secret.rsplit("/", 1)[1]]}
    tok = f"xoxb-{g.chars(string.digits, 12)}-{g.chars(string.digits, 13)}-{g.chars(ALNUM, 24)}"
    lines = g.pick([f"SLACK_BOT_TOKEN={tok}", f"slack_sdk.errors.SlackApiError: invalid_auth (token {tok})",
                    f"+ curl -s -d token={tok} https://slack.com/api/chat.postMessage"])
    return {"kind": "slack_token", "lines": [lines], "secrets": [tok]}


def _jwt(g: Gen) -> str:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": g.hexs(8), "typ": "JWT"}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({
        "aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{g.uuid()}/",
        "oid": g.uuid(), "exp": 1764300000 + g.r.randint(0, 99999)}).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{g.b64url(256)}"


def k_jwt(g: Gen) -> Record:
    jwt = _jwt(g)
    lines = g.pick([
        f'{{"token_type": "Bearer", "expires_in": 3599, "access_token": "{jwt}"}}',
        f"DEBUG:msal.token_cache:id_token={jwt}",
        f"> Authorization: Bearer {jwt}",
        f"Got token {jwt} for scope https://storage.azure.com/.default",
        f"AZURE_FEDERATED_TOKEN={jwt}",
    ]).split("\n")
    return {"kind": "jwt", "lines": lines, "secrets": [jwt]}


def k_bearer(g: Gen) -> Record:
    tok = g.pick([g.b64url(32), g.chars(ALNUM, 40), f"{g.job()}.{g.b64url(32)}"])
    lines = g.pick([
        f"+ curl -sS -H 'Authorization: Bearer {tok}' -X POST http://elb-job-api:8080/v1/jobs/{g.job()}/finalize",
        f"+ curl -H \"Authorization: Bearer {tok}\" https://elb-api.example.org/v1/status",
        f"> Authorization: Bearer {tok}",
        f"requests: sending headers {{'User-Agent': 'python-requests/2.32.3', 'Authorization': 'Bearer {tok}'}}",
        f"http.client: send: b'POST /v1/ingest HTTP/1.1\\r\\nHost: blast-logs-aggregator:8080\\r\\nAuthorization: Bearer {tok}\\r\\n'",
    ]).split("\n")
    return {"kind": "bearer_token", "lines": lines, "secrets": [tok]}


def k_basic_auth(g: Gen) -> Record:
    user, pw = g.pick(["elb", "admin", "blast", "ci-bot"]), g.password()
    cred = base64.b64encode(f"{user}:{pw}".encode()).decode()
    lines = g.pick([
        f"> Authorization: Basic {cred}",
        f"+ curl -H 'Authorization: Basic {cred}' https://registry.example.org/v2/_catalog",
        f'"headers": {{"Authorization": "Basic {cred}", "Accept": "*/*"}}',
    ]).split("\n")
    return {"kind": "basic_auth", "lines": lines, "secrets": [cred]}


def k_url_password(g: Gen) -> Record:
    pw = g.password().replace("@", "").replace("/", "").replace(":", "").replace("#", "").replace("%", "")
    user = g.pick(["elb", "postgres", "blast", "admin", "svc_elb"])
    url = g.pick([f"postgresql://{user}:{pw}@elb-db.postgres.database.azure.com:5432/elb",
                  f"mysql://{user}:{pw}@10.0.3.4:3306/jobs", f"redis://:{pw}@elb-cache:6379/0",
                  f"amqp://{user}:{pw}@rabbitmq:5672/%2F", f"https://{user}:{pw}@nexus.example.org/repository/pypi/simple",
                  f"mongodb+srv://{user}:{pw}@cluster0.abcde.mongodb.net/elb?retryWrites=true"])
    lines = g.pick([
        f"DATABASE_URL={url}",
        f"sqlalchemy.exc.OperationalError: (psycopg2.OperationalError) could not connect to server: {url}",
        f"+ pip install --index-url {url} elastic-blast",
        f"Connecting to {url} ...",
        f"  url: {url}",
    ]).split("\n")
    return {"kind": "url_password", "lines": lines, "secrets": [pw]}


def k_cli_password(g: Gen) -> Record:
    pw = g.password()
    line = g.pick([
        f"+ mysql -h elb-db -u elb --password={pw} -e 'select 1'",
        f"+ az login --service-principal -u {g.uuid()} --password {pw} --tenant {g.uuid()}",
        f"+ az login --service-principal --username {g.uuid()} --password={pw} --tenant {g.uuid()}",
        f"+ docker login elbregistry.azurecr.io --username elb --password {pw}",
        f"+ psql 'host=elb-db user=elb password={pw} dbname=elb sslmode=require'",
        f"+ kubectl create secret generic elb-db --from-literal=password={pw}",
        f"+ openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.pfx -passout pass:{pw}",
        f"+ sshpass -p '{pw}' scp results.tar.gz elb@10.0.0.5:/data/",
    ])
    return {"kind": "cli_password", "lines": [line], "secrets": [pw]}


def k_env_dump(g: Gen) -> Record:
    name, value = g.pick(["DB_PASSWORD", "POSTGRES_PASSWORD", "ELB_API_KEY", "AZURE_CLIENT_SECRET", "CLIENT_SECRET",
                          "NCBI_API_KEY", "BLAST_LOGS_TOKEN", "BLAST_LOGS_SECRET", "BLAST_LOGS_ADMIN_TOKEN",
                          "SENDGRID_API_KEY", "REDIS_PASSWORD", "SECRET_KEY", "ENCRYPTION_KEY", "HF_TOKEN"]), ""
    value = {
        "AZURE_CLIENT_SECRET": g.chars(ALNUM, 3) + "8Q~" + g.chars(ALNUM + "~._-", 34),
        "CLIENT_SECRET": g.chars(ALNUM + "~._-", 40),
        "NCBI_API_KEY": g.hexs(36),
        "BLAST_LOGS_TOKEN": f"{g.job()}.{g.b64url(32)}",
        "SENDGRID_API_KEY": f"SG.{g.chars(ALNUM + '_-', 22)}.{g.chars(ALNUM + '_-', 43)}",
        "HF_TOKEN": "hf_" + g.chars(ALNUM, 34),
    }.get(name) or g.password()
    around = ["HOSTNAME=" + g.pod(), "HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "BLASTDB=/blast/blastdb", f"BLAST_ELB_JOB_ID={g.job()}", "KUBERNETES_SERVICE_PORT=443"]
    g.r.shuffle(around)
    form = g.pick(["{n}={v}", "declare -x {n}=\"{v}\"", "+ export {n}={v}", "{n}: {v}", "    - name: {n}\n      value: \"{v}\""])
    lines = around[:2] + form.format(n=name, v=value).split("\n") + around[2:4]
    return {"kind": "env_secret", "lines": lines, "secrets": [value]}


def k_json_config(g: Gen) -> Record:
    key, value = g.pick([
        ("client_secret", g.chars(ALNUM + "~._-", 40)), ("password", g.password()), ("apiKey", g.chars(ALNUM, 32)),
        ("api_key", g.hexs(32)), ("secret", g.b64(24)), ("accountKey", g.b64(64)), ("private_token", g.chars(ALNUM, 20)),
        ("refresh_token", g.b64url(48)), ("clientSecret", g.chars(ALNUM + "~._-", 40)), ("sas_token", g.sas()[0]),
    ])
    secret = (key == "sas_token" and value.rsplit("sig=", 1)[1]) or value
    lines = g.pick([
        json.dumps({"cluster": "elb-cluster", "region": "eastus", key: value, "machine_type": "Standard_E32s_v3"}),
        "{\n" + f'  "tenant_id": "{g.uuid()}",\n  "{key}": "{value}",\n  "subscription": "{g.uuid()}"\n' + "}",
        f"Loaded config: {{'num_nodes': 4, '{key}': '{value}', 'db': 'core_nt'}}",
        f"  {key}: {value}",
        f"{key} = \"{value}\"",
    ]).split("\n")
    return {"kind": "config_secret", "lines": lines, "secrets": [secret]}


def _pem_lines(g: Gen, kind: str) -> tuple[list[str], list[str]]:
    body = base64.b64encode(g.r.randbytes(g.r.choice([121, 240, 1190]))).decode()
    rows = [body[i:i + 64] for i in range(0, len(body), 64)]
    return [f"-----BEGIN {kind}-----", *rows, f"-----END {kind}-----"], [r for r in rows if len(r) >= 16]


def k_pem(g: Gen) -> Record:
    kind = g.pick(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
    block, rows = _pem_lines(g, kind)
    form = g.r.randint(0, 3)
    if form == 0:
        lines = ["+ cat /etc/elb/tls/tls.key", *block]
    elif form == 1:
        lines = ["Loading service principal certificate:", *block, "certificate loaded"]
    elif form == 2:  # a service account JSON printed on one line: the key's newlines are escaped
        lines = ['{"type": "service_account", "project_id": "ncbi-elb", "private_key": "' + "\\n".join(block) + '\\n", '
                 '"client_email": "elb@ncbi-elb.iam.gserviceaccount.com"}']
    else:
        lines = ["+ echo \"$SSH_KEY\"", *block]
    return {"kind": "private_key", "lines": lines, "secrets": rows}


def k_npm_pypi(g: Gen) -> Record:
    tok = g.pick(["npm_" + g.chars(ALNUM, 36), "pypi-" + g.b64url(60)])
    lines = g.pick([
        f"//registry.npmjs.org/:_authToken={tok}",
        f"+ twine upload --username __token__ --password {tok} dist/*",
        f"TWINE_PASSWORD={tok}",
        f"NPM_TOKEN={tok}",
    ]).split("\n")
    return {"kind": "package_registry_token", "lines": lines, "secrets": [tok]}


def k_k8s_secret_yaml(g: Gen) -> Record:
    val = base64.b64encode(g.password().encode()).decode()
    tok = base64.b64encode(f"{g.job()}.{g.b64url(32)}".encode()).decode()
    lines = ["+ kubectl get secret blast-logs-token -o yaml", "apiVersion: v1", "data:", f"  token: {tok}",
             f"  password: {val}", "kind: Secret", "metadata:", "  name: blast-logs-token", "type: Opaque"]
    return {"kind": "k8s_secret_data", "lines": lines, "secrets": [tok, val]}


def k_azure_client_secret_cli(g: Gen) -> Record:
    secret = g.chars(ALNUM, 3) + "8Q~" + g.chars(ALNUM + "~._-", 34)
    app, tenant = g.uuid(), g.uuid()
    lines = g.pick([
        f'{{\n  "appId": "{app}",\n  "displayName": "elb-sp",\n  "password": "{secret}",\n  "tenant": "{tenant}"\n}}',
        f"AZURE_CLIENT_ID={app}\nAZURE_CLIENT_SECRET={secret}\nAZURE_TENANT_ID={tenant}",
        f"+ az login --service-principal -u {app} -p {secret} --tenant {tenant}",
        f"ClientSecretCredential.get_token failed: AADSTS7000215: Invalid client secret provided. client_secret={secret}",
    ]).split("\n")
    return {"kind": "azure_client_secret", "lines": lines, "secrets": [secret]}


def k_google_api_key(g: Gen) -> Record:
    key = "AIza" + g.chars(ALNUM + "_-", 35)
    lines = g.pick([
        f"GET https://www.googleapis.com/storage/v1/b/elb-results/o?key={key} 403",
        f"GOOGLE_API_KEY={key}",
        f'{{"api_key": "{key}"}}',
    ]).split("\n")
    return {"kind": "google_api_key", "lines": lines, "secrets": [key]}


def k_docker_config(g: Gen) -> Record:
    cred = base64.b64encode(f"elb:{g.password()}".encode()).decode()
    lines = g.pick([
        f'{{"auths": {{"elbregistry.azurecr.io": {{"auth": "{cred}"}}}}}}',
        "+ cat /root/.docker/config.json\n{\n\t\"auths\": {\n\t\t\"elbregistry.azurecr.io\": {\n"
        f"\t\t\t\"auth\": \"{cred}\"\n\t\t}}\n\t}}\n}}",
    ]).split("\n")
    return {"kind": "docker_auth", "lines": lines, "secrets": [cred]}


KINDS: tuple[Callable[[Gen], Record], ...] = (
    k_azure_sas, k_azure_connection_string, k_azure_servicebus, k_aws_access_key, k_aws_secret_key, k_github,
    k_slack, k_jwt, k_bearer, k_basic_auth, k_url_password, k_cli_password, k_env_dump, k_json_config, k_pem,
    k_npm_pypi, k_k8s_secret_yaml, k_azure_client_secret_cli, k_google_api_key, k_docker_config,
)


def secret_records(seed: int = SEED) -> list[Record]:
    g = Gen(seed)
    records = [make(g) for make in KINDS for _ in range(RECORDS_PER_KIND)]
    for rec in records:
        lines = rec["lines"]
        assert isinstance(lines, list) and isinstance(rec["secrets"], list)
        for s in rec["secrets"]:
            assert any(s in line for line in lines), (rec["kind"], s)
    return records


# --- ordinary lines -------------------------------------------------------------------------------

def _azcopy(g: Gen) -> list[str]:
    job = g.uuid()
    acct = g.account()
    total = g.r.randint(4, 40)
    out = ["INFO: Scanning...", "INFO: Authenticating to destination using Azure AD", "INFO: Any empty folders will not be processed, because source and/or destination doesn't have full folder support", "",
           f"Job {job} has started", f"Log file is located at: /root/.azcopy/{job}.log", ""]
    done = 0
    while done < total:
        done = min(total, done + g.r.randint(0, 6))
        pct = 100.0 * done / total
        out.append(f"{pct:.1f} %, {done} Done, 0 Failed, {total - done} Pending, 0 Skipped, {total} Total, "
                   f"2-sec Throughput (Mb/s): {g.r.uniform(50, 900):.4f}")
    out += ["", "", f"Job {job} summary", f"Elapsed Time (Minutes): {g.r.uniform(0.03, 9):.4f}",
            f"Number of File Transfers: {total}", "Number of Folder Property Transfers: 0", "Number of Symlink Transfers: 0",
            f"Total Number of Transfers: {total}", f"Number of File Transfers Completed: {total}",
            "Number of Folder Transfers Completed: 0", "Number of File Transfers Failed: 0",
            "Number of Folder Transfers Failed: 0", "Number of File Transfers Skipped: 0",
            "Number of Folder Transfers Skipped: 0", f"TotalBytesTransferred: {g.r.randint(10**6, 10**11)}",
            "Final Job Status: Completed", "",
            f"INFO: https://{acct}.blob.core.windows.net/results/{g.job()}/batch_{g.r.randint(0, 999):03d}.out.gz uploaded"]
    return out


def _set_x(g: Gen) -> list[str]:
    n, job = g.r.randint(0, 999), g.job()
    return [
        f"+ echo run start {n} blastn core_nt", f"run start {n} blastn core_nt", "++ mktemp", f"+ ERROR_FILE=/tmp/tmp.{g.chars(ALNUM, 10)}",
        f"+ blastn -db core_nt -query /blast/queries/batch_{n:03d}.fa -out /blast/results/batch_{n:03d}.out -num_threads 16 -evalue 0.01 -outfmt 7 -max_target_seqs 500",
        "+ BLAST_EXIT_CODE=0", "+ cat /tmp/tmp." + g.chars(ALNUM, 10), f"+ echo run end {n} 0", f"run end {n} 0",
        "++ date +%s", f"+ start={1764270000 + g.r.randint(0, 10**6)}",
        "+ '[' -s /result/BLAST_EXIT_CODE.out ']'", "+ sleep 1",
        f"+ gsutil -q stat gs://elb-results/{job}/metadata/query_length.txt",
        f"+ azcopy cp /result/batch_{n:03d}.out https://{g.account()}.blob.core.windows.net/results/{job}/",
        "++ cat /result/BLAST_EXIT_CODE.out", "+ exit 0",
        "+ export BLAST_LOGS_TOKEN_FILE=/var/run/secrets/blast-logs/token",
        "+ BLAST_LOGS_TOKEN_FILE=/var/run/secrets/blast-logs/token",
        "+ export TOKENIZERS_PARALLELISM=false",
        f"+ printf 'RUNTIME %s %f seconds\\n' cache-blastdbs-to-ram {g.r.randint(1, 900)}",
        f"RUNTIME cache-blastdbs-to-ram {g.r.randint(1, 900)}.000000 seconds",
        "+ blastdb_path -dbtype nucl -db core_nt -getvolumespath", "+ tr ' ' '\\n'", "+ parallel vmtouch -tqm 5G",
        f"+ kubectl logs {g.pod()} -c blast --tail=100",
        "+ set +x",
    ]


def _traceback(g: Gen) -> list[str]:
    job = g.job()
    return g.pick([
        ["Traceback (most recent call last):",
         '  File "/usr/local/bin/elastic-blast", line 8, in <module>',
         "    sys.exit(main())",
         f'  File "/usr/local/lib/python3.11/site-packages/elastic_blast/commands/submit.py", line {g.r.randint(50, 900)}, in submit',
         "    elastic_blast.submit(query_batches, cfg)",
         f'  File "/usr/local/lib/python3.11/site-packages/elastic_blast/azure.py", line {g.r.randint(50, 900)}, in _upload',
         "    blob_client.upload_blob(data, overwrite=True)",
         "azure.core.exceptions.ResourceNotFoundError: The specified container does not exist.",
         f"RequestId:{g.uuid()}", f"Time:{g.ts()}", "ErrorCode:ContainerNotFound",
         "Content: <?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ContainerNotFound</Code><Message>The specified container does not exist.</Message></Error>"],
        ["Traceback (most recent call last):",
         '  File "/opt/elb/split_queries.py", line 41, in <module>',
         "    with open(sys.argv[1]) as f:",
         f"FileNotFoundError: [Errno 2] No such file or directory: '/blast/queries/batch_{g.r.randint(0, 999):03d}.fa'"],
        ["Traceback (most recent call last):",
         '  File "/usr/lib/python3.11/json/decoder.py", line 355, in raw_decode',
         "    raise JSONDecodeError(\"Expecting value\", s, err.value) from None",
         "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)"],
        ["Traceback (most recent call last):",
         f'  File "/usr/local/lib/python3.11/site-packages/elastic_blast/tuner.py", line {g.r.randint(10, 300)}, in get_mt_mode',
         "    return MTMode.from_options(options)",
         "KeyError: 'num_threads'",
         f"ERROR: job {job} failed: KeyError: 'num_threads'"],
        ["Traceback (most recent call last):",
         '  File "/usr/local/lib/python3.11/site-packages/urllib3/connectionpool.py", line 793, in urlopen',
         "    response = self._make_request(",
         "urllib3.exceptions.ProtocolError: ('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
         "",
         "During handling of the above exception, another exception occurred:",
         "",
         f"requests.exceptions.ConnectionError: HTTPConnectionPool(host='elb-job-api', port=8080): Max retries exceeded with url: /v1/jobs/{job}/status"],
    ])


def _k8s(g: Gen) -> list[str]:
    pod = g.pod()
    node = f"aks-nodepool1-{g.chars(string.digits, 8)}-vmss{g.r.randint(0, 20):06d}"
    digest = g.hexs(64)
    return [
        f"  Normal  Scheduled  {g.r.randint(1, 59)}s   default-scheduler  Successfully assigned default/{pod} to {node}",
        f"  Normal  Pulled     {g.r.randint(1, 59)}s   kubelet            Container image \"ncbi/elb:1.3.0\" already present on machine",
        f"  Normal  Pulling    {g.r.randint(1, 59)}s   kubelet            Pulling image \"elbregistry.azurecr.io/blast-logs-shipper@sha256:{digest}\"",
        f"  Warning  BackOff  {g.r.randint(1, 9)}m   kubelet  Back-off restarting failed container blast in pod {pod}_default({g.uuid()})",
        f"{pod}   2/2     Running     0          {g.r.randint(1, 59)}m",
        f"job.batch/blastn-batch-core-nt-job-{g.r.randint(0, 99)} created",
        "secret/blast-logs-token created",
        "      secretName: blast-logs-token",
        f"Name:         {pod}",
        "Labels:       app=blast",
        f"              elb-job-id={g.job()}",
        f"Controlled By:  Job/blastn-batch-core-nt-job-{g.r.randint(0, 99)}",
        f"    Container ID:  containerd://{g.hexs(64)}",
        f"    Image ID:      docker.io/ncbi/elb@sha256:{g.hexs(64)}",
        "      /var/run/secrets/kubernetes.io/serviceaccount from kube-api-access-" + g.chars(string.ascii_lowercase + string.digits, 5) + " (ro)",
    ]


def _misc(g: Gen) -> list[str]:
    h = g.hexs(32)
    return [
        f"{h}  core_nt.{g.r.randint(0, 99):02d}.tar.gz",
        f"{g.hexs(64)}  /blast/results/batch_{g.r.randint(0, 999):03d}.out.gz",
        f"HEAD is now at {g.hexs(7)} Merge pull request #{g.r.randint(100, 999)} from ncbi/tuning",
        f"Job ID: {g.uuid()}",
        f"x-ms-request-id: {g.uuid()}",
        f"x-ms-client-request-id: {g.uuid()}",
        f"etag: \"0x8DC{g.chars('0123456789ABCDEF', 12)}\"",
        f"Content-MD5: {base64.b64encode(bytes.fromhex(h)).decode()}",
        f"INFO:elastic_blast:Query {g.pick(['NC_000913.3', 'NM_000546.6', 'XM_011520000.4', 'lcl|Query_1', 'gi|49175990|ref|NC_000913.3|', 'sp|P69905|HBA_HUMAN'])} has {g.r.randint(50, 50000)} bases",
        f"/blast/blastdb/core_nt.{g.r.randint(0, 99):02d}.nsq",
        "/var/run/blast-logs/logs/blast.log",
        f"           Files: {g.r.randint(1, 400)}",
        f"     Directories: {g.r.randint(1, 4)}",
        f"   Touched Pages: {g.r.randint(10**5, 10**7)} ({g.r.randint(1, 99)}G)",
        f"         Elapsed: {g.r.uniform(0.1, 300):.5g} seconds",
        f"HOSTNAME={g.pod()}",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"BLAST_ELB_BATCH_NUM={g.r.randint(0, 999)}",
        "KUBERNETES_SERVICE_HOST=10.0.0.1",
        "BLAST_USAGE_REPORT=false",
        "Using keyring backend: keyring.backends.fail.Keyring",
        "WARNING: The token cache at /root/.azure/msal_token_cache.json is from an older version; rebuilding",
        "Login Succeeded",
        f"Your identity (managed identity client id {g.uuid()}) was used to authenticate",
        f"Retrying ({g.r.randint(1, 5)}/5) in {g.r.randint(1, 30)}s: 503 Service Unavailable",
        f"elb-{g.hexs(6)}: {g.r.randint(1, 800)} of {g.r.randint(800, 900)} batches done",
        "git@github.com:ncbi/elastic-blast.git",
        f"Downloading https://ftp.ncbi.nlm.nih.gov/blast/db/core_nt.{g.r.randint(0, 99):02d}.tar.gz.md5",
        "Reading package lists... Done",
        f"Processed {g.r.randint(1, 10**6)} sequences in {g.r.uniform(1, 100):.2f}s",
        f"max_target_seqs={g.r.randint(1, 5000)} evalue=1e-{g.r.randint(1, 30)} word_size={g.pick(['11', '28', '7'])}",
        f"ps aux | grep blastn: root {g.r.randint(1, 999)} 99.0 12.3 ... blastn -db core_nt",
        f"sequence >{g.pick(['NC_045512.2', 'MN908947.3', 'OQ291490.1'])} {''.join(g.r.choice('ACGT') for _ in range(60))}",
        f"Authorization succeeded for managed identity {g.uuid()}",
        "access_key_id_rotation_days=90",
        "token_type=Bearer expires_in=3599",
        "Key Vault reference resolved for setting 'ELB_DB_PASSWORD'",
    ]


def synthetic_lines(seed: int = SEED) -> list[str]:
    g = Gen(seed + 1)
    makers = (_azcopy, _set_x, _traceback, _k8s, _misc)
    out: list[str] = []
    while len(out) < 2200:
        out += g.pick(makers)(g)  # type: ignore[arg-type]
    return out


# --- real BLAST output ----------------------------------------------------------------------------

def _fasta(g: Gen, n: int, prefix: str, length: tuple[int, int]) -> tuple[str, list[str]]:
    seqs = ["".join(g.r.choice("ACGT") for _ in range(g.r.randint(*length))) for _ in range(n)]
    text = "".join(f">{prefix}{i + 1}.1 synthetic sequence {i + 1}\n" + "\n".join(s[j:j + 70] for j in range(0, len(s), 70)) + "\n"
                   for i, s in enumerate(seqs))
    return text, seqs


def _mutate(g: Gen, s: str, rate: float) -> str:
    return "".join(g.r.choice("ACGT") if g.r.random() < rate else c for c in s)


def blast_lines(seed: int = SEED) -> list[str]:
    """Run the installed BLAST+ tools; their stdout and stderr, command by command."""
    if shutil.which("blastn") is None or shutil.which("makeblastdb") is None:
        raise SystemExit("blastn/makeblastdb are not installed")
    g = Gen(seed + 2)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        db_text, subjects = _fasta(g, 40, "SYN_", (800, 3000))
        (d / "db.fa").write_text(db_text)
        queries = []
        for i in range(8):
            s = g.r.choice(subjects)
            start = g.r.randint(0, len(s) // 2)
            queries.append(f">query_{i + 1}\n{_mutate(g, s[start:start + g.r.randint(150, 600)], 0.05)}\n")
        queries.append(">query_random\n" + "".join(g.r.choice("ACGT") for _ in range(300)) + "\n")
        (d / "q.fa").write_text("".join(queries))
        (d / "bad.fa").write_text(">broken\nACGTNNXX??12\n")

        def run(*args: str) -> None:
            p = subprocess.run(list(args), cwd=d, capture_output=True, text=True, timeout=120)
            out.extend((p.stdout + p.stderr).replace(str(d), "/blast/work").splitlines())

        run("makeblastdb", "-in", "db.fa", "-dbtype", "nucl", "-out", "syndb", "-title", "synthetic", "-parse_seqids")
        for fmt in ("0", "6", "7", "10", "6 qseqid sseqid pident length evalue bitscore staxids"):
            run("blastn", "-db", "syndb", "-query", "q.fa", "-outfmt", fmt, "-evalue", "0.01", "-max_target_seqs", "5")
        run("blastn", "-task", "megablast", "-db", "syndb", "-query", "q.fa", "-outfmt", "0", "-num_alignments", "2")
        run("blastdbcmd", "-db", "syndb", "-info")
        run("blastdbcmd", "-db", "syndb", "-entry", "SYN_3.1", "-range", "1-200")
        # Errors, the way they reach a pod's log.
        run("blastn", "-db", "missing_db", "-query", "q.fa")
        run("blastn", "-db", "syndb", "-query", "no_such_query.fa")
        run("blastn", "-db", "syndb", "-query", "q.fa", "-evalue", "abc")
        run("blastn", "-db", "syndb", "-query", "q.fa", "-num_threads", "-3")
        run("blastn", "-db", "syndb", "-query", "q.fa", "-task", "blastx")
        run("blastn", "-db", "syndb", "-query", "q.fa", "-unknown_option")
        run("blastn", "-db", "syndb", "-query", "bad.fa", "-outfmt", "6")
        run("makeblastdb", "-in", "no_such.fa", "-dbtype", "nucl")
        run("makeblastdb", "-in", "db.fa", "-dbtype", "prot", "-out", "wrongtype")
        run("blastdbcmd", "-db", "syndb", "-entry", "NOPE_1")
        run("blastn", "-version")
        run("blastn", "-help")
    return out


# --- main -----------------------------------------------------------------------------------------

def render_secrets(records: list[Record]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def render_lines(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the synthetic files instead of writing")
    args = parser.parse_args(argv)
    secrets, synthetic = render_secrets(secret_records()), render_lines(synthetic_lines())
    rule_records, barren = make_rules_corpus.corpus()
    rules = make_rules_corpus.render(rule_records)
    if args.check:
        same = (SECRETS_FILE.read_text() == secrets and SYNTHETIC_FILE.read_text() == synthetic
                and RULES_FILE.read_text() == rules)
        print("up to date" if same else "differs: rerun without --check")
        return 0 if same else 1
    DATA.mkdir(parents=True, exist_ok=True)
    SECRETS_FILE.write_text(secrets)
    SYNTHETIC_FILE.write_text(synthetic)
    BLAST_FILE.write_text(render_lines(blast_lines()))
    RULES_FILE.write_text(rules)
    print(f"wrote {RULES_FILE.name}: {len(rule_records)} records; rules that yielded no secret: {barren}")
    digest = hashlib.sha256(secrets.encode()).hexdigest()[:12]
    print(f"wrote {SECRETS_FILE.name} (sha256 {digest}), {SYNTHETIC_FILE.name}, {BLAST_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
