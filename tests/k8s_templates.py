"""ElasticBLAST-shaped Kubernetes templates (tests/fixtures/k8s) and how the job API renders them:
shared by the inject tests and the deployment checks."""

from __future__ import annotations

import re
from typing import Any

from paths import ROOT
from ruamel.yaml import YAML

FIXTURES = sorted((ROOT / "tests" / "fixtures" / "k8s").glob("*.yaml"))
K8S_VERSIONS = ("1.29.0", "1.33.0")
#: The fixtures' containers with no command (they run their image's entrypoint), before and after
#: rendering: inject refuses them unless they are skipped (`--skip-container`).
NO_COMMAND = frozenset({"${K8S_JOB_SUBMIT_JOBS}", "submit-jobs"})

#: What the job API would substitute; `${BASH_VERSION}` and friends belong to bash and stay.
RENDER_VALUES = {
    "BATCH_LEN": "100000",
    "ELB_BACKOFF_LIMIT": "3",
    "ELB_BLASTDB_SRC": "azure",
    "ELB_BLAST_OPTIONS": "-evalue 0.01 -outfmt 7",
    "ELB_BLAST_PROGRAM": "blastn",
    "ELB_BLAST_TIMEOUT": "3600",
    "ELB_DB_LABEL": "core-nt",
    "ELB_DB_MOL_TYPE": "nucl",
    "ELB_DB_PATH": "",
    "ELB_DB": "core_nt",
    "ELB_DOCKER_IMAGE": "ncbi/elb:1.3.0",
    "ELB_IMAGE_QS": "ncbi/elasticblast-query-split:0.1.4",
    "ELB_JANITOR_SCHEDULE": "*/5 * * * *",
    "ELB_JOB_ID": "elb-8a3c1f",
    "ELB_MEM_LIMIT": "120Gi",
    "ELB_MEM_REQUEST": "0.5G",
    "ELB_NUM_CPUS_REQ": "15",
    "ELB_NUM_CPUS": "16",
    "ELB_NUM_NODES": "4",
    "ELB_PARALLELISM": "2",
    "ELB_RESULTS": "https://acct.blob.core.windows.net/results/elb-8a3c1f",
    "INPUT_QUERY": "https://acct.blob.core.windows.net/queries/q.fa",
    "JOB_NUM": "7",
    "K8S_JOB_BLAST": "blast",
    "K8S_JOB_GET_BLASTDB": "get-blastdb",
    "K8S_JOB_IMPORT_QUERY_BATCHES": "import-query-batches",
    "K8S_JOB_LOAD_BLASTDB_INTO_RAM": "load-blastdb-into-ram",
    "K8S_JOB_RESULTS_EXPORT": "results-export",
    "K8S_JOB_SUBMIT_JOBS": "submit-jobs",
    "NODE_ORDINAL": "0",
    "TIMEOUT": "7200",
}


def render(text: str, values: dict[str, str] = RENDER_VALUES) -> str:
    """envsubst for the names we know, leaving every other `${...}` as it is (like the job API)."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def load_all(text: str) -> list[Any]:
    return [d for d in YAML(typ="safe", pure=True).load_all(text) if d is not None]


POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
}


def pod_specs(docs: list[Any]) -> list[dict[str, Any]]:
    specs = []
    for doc in docs:
        if doc.get("kind") in POD_SPEC_PATHS:
            spec = doc
            for key in POD_SPEC_PATHS[doc["kind"]]:
                spec = spec[key]
            specs.append(spec)
    return specs
