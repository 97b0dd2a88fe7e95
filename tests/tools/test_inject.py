"""`blast-log-shipper inject` on ElasticBLAST-shaped templates (tests/fixtures/k8s)."""

from __future__ import annotations

import copy
import difflib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from k8s_templates import FIXTURES, K8S_VERSIONS, NO_COMMAND, ROOT, load_all, pod_specs, render

from blastlogs_tools.inject import (
    LOGWRAP_PATH,
    MOUNT_PATH,
    SIDECAR_NAME,
    VOLUME_NAME,
    InjectError,
    InjectOptions,
    inject_documents,
    inject_pod_spec,
    main,
)

#: The fixtures need their entrypoint-only containers skipped (inject refuses them otherwise).
SKIP = InjectOptions(skip_containers=NO_COMMAND)


def run_main(args: list[str], stdin_text: str | None = None, tmp_path: Path | None = None) -> tuple[int, str, str]:
    """Run the real command in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "shipper", "inject", *args],
        input=stdin_text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(params=FIXTURES, ids=lambda p: p.name)
def fixture_text(request: pytest.FixtureRequest) -> str:
    return Path(request.param).read_text()


def test_fixtures_cover_the_shapes_we_promise() -> None:
    text = "".join(p.read_text() for p in FIXTURES)
    for shape in ('"-co", "pipefail"', '"-ce"', '["/bin/bash", "-c"]', '"run.sh"', "- sh\n", ".sh]",
                  "initContainers:", "kind: DaemonSet", "kind: CronJob", "cpu: ${", "parallelism: ${",
                  "activeDeadlineSeconds: ${", "kind: ConfigMap"):
        assert shape in text, shape
    assert any(len(load_all(p.read_text())) >= 2 for p in FIXTURES)


def test_every_command_is_wrapped_and_args_untouched(fixture_text: str) -> None:
    before = pod_specs(load_all(fixture_text))
    warnings: list[str] = []
    after = pod_specs(load_all(inject_documents(fixture_text, SKIP, warnings)))
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        assert new["initContainers"][0]["name"] == SIDECAR_NAME
        assert new["volumes"][0] == {"name": VOLUME_NAME, "emptyDir": {"sizeLimit": "1Gi"}}
        assert new["volumes"][1:] == old.get("volumes", [])
        olds = old.get("initContainers", []) + old["containers"]
        news = new["initContainers"][1:] + new["containers"]
        for o, n in zip(olds, news, strict=True):
            assert n.get("args") == o.get("args")
            if o.get("command"):
                assert n["command"] == [LOGWRAP_PATH, o["name"], "--", *o["command"]]
                assert n["volumeMounts"][0] == {"name": VOLUME_NAME, "mountPath": MOUNT_PATH}
                assert n["volumeMounts"][1:] == o.get("volumeMounts", [])
                assert {k: v for k, v in n.items() if k not in ("command", "volumeMounts")} == {
                    k: v for k, v in o.items() if k not in ("command", "volumeMounts")
                }
            else:
                assert n == o
                assert any(repr(o["name"]) in w and "skipped" in w for w in warnings)


def test_sidecar_is_a_hardened_native_sidecar() -> None:
    text = (FIXTURES[0].parent / "blast-batch-job.yaml").read_text()
    spec = pod_specs(load_all(inject_documents(text)))[0]
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["blast-log-shipper", "run"]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-x", LOGWRAP_PATH]
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(sidecar["resources"]) == {"requests", "limits"}
    assert sidecar["volumeMounts"] == [{"name": VOLUME_NAME, "mountPath": MOUNT_PATH}]
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["BLAST_LOGS_JOB_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['elb-job-id']"
    assert env["BLAST_LOGS_POD"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["BLAST_LOGS_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["BLAST_LOGS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "blast-logs-token", "key": "token",
                                                                    "optional": True}
    assert env["BLAST_LOGS_AGGREGATOR_URL"]["value"] == "http://blast-logs-aggregator:8080"
    assert env["BLAST_LOGS_PHASE"]["value"] == "running"
    assert "value" not in env["BLAST_LOGS_TOKEN"]


def test_options_reach_the_sidecar() -> None:
    text = (FIXTURES[0].parent / "init-local-ssd.yaml").read_text()
    options = InjectOptions(
        aggregator_url="http://a:8080,http://b:8080",
        token_secret="elb-${ELB_JOB_ID}-logs",
        token_key="jt",
        job_id_label="example.org/job",
        image="registry.example/blast-logs-shipper:9",
        volume_size_limit="256Mi",
    )
    out = inject_documents(text, options)
    for spec in pod_specs(load_all(out)):
        env = {e["name"]: e for e in spec["initContainers"][0]["env"]}
        assert env["BLAST_LOGS_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "elb-${ELB_JOB_ID}-logs", "key": "jt",
                                                                        "optional": True}
        assert env["BLAST_LOGS_JOB_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['example.org/job']"
        assert env["BLAST_LOGS_AGGREGATOR_URL"]["value"] == "http://a:8080,http://b:8080"
        assert spec["initContainers"][0]["image"] == "registry.example/blast-logs-shipper:9"
        assert spec["volumes"][0]["emptyDir"] == {"sizeLimit": "256Mi"}
    rendered = load_all(render(out))
    assert pod_specs(rendered)[1]["initContainers"][0]["env"][3]["valueFrom"]["secretKeyRef"]["name"] == "elb-elb-8a3c1f-logs"


def test_phase_from_app_label_or_flag() -> None:
    def phases(text: str, options: InjectOptions) -> list[str]:
        out = []
        for spec in pod_specs(load_all(inject_documents(text, options))):
            env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
            out.append(env["BLAST_LOGS_PHASE"])
        return out

    init = (FIXTURES[0].parent / "init-local-ssd.yaml").read_text()
    submit = (FIXTURES[0].parent / "submit-and-janitor.yaml").read_text()
    assert phases(init, InjectOptions()) == ["unknown", "staging_db"]  # DaemonSet has no app label
    assert phases(submit, SKIP) == ["unknown", "unknown"]  # app: submit / janitor
    assert phases(init, InjectOptions(phase="warming_up")) == ["warming_up", "warming_up"]


def test_everything_else_is_kept_byte_for_byte(fixture_text: str) -> None:
    """Only insertions, except the flow lists we extend in place: comments, quoting, folding kept."""
    out = inject_documents(fixture_text, SKIP)
    old, new = fixture_text.splitlines(), out.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal" or tag == "insert":
            continue
        assert tag == "replace", (tag, old[i1:i2])
        for line in old[i1:i2]:
            assert re.match(r"\s*(command|volumeMounts): \[", line), line
        for o in old[i1:i2]:
            head, _, rest = o.partition("[")
            assert any(n.startswith(head + "[") and n.endswith(rest) for n in new[j1:j2]), o
    assert "${" in out and out.count("#") == fixture_text.count("#")


def test_other_kinds_pass_through_untouched() -> None:
    text = (FIXTURES[0].parent / "submit-and-janitor.yaml").read_text()
    out = inject_documents(text, SKIP)
    config_map = text[text.rindex("---\napiVersion: v1\nkind: ConfigMap") :]
    assert out.endswith(config_map)
    crd = "apiVersion: example.org/v1\nkind: BlastThing\nspec:\n  containers: [{name: x, command: [sh]}]\n"
    assert inject_documents(crd) == crd


def test_rendering_commutes_with_injecting(fixture_text: str) -> None:
    secret = "logs-${ELB_JOB_ID}"  # a placeholder in an option renders like one in the template
    render_then_inject = load_all(inject_documents(render(fixture_text), InjectOptions(
        token_secret=render(secret), skip_containers=NO_COMMAND)))
    inject_then_render = load_all(render(inject_documents(fixture_text, InjectOptions(
        token_secret=secret, skip_containers=NO_COMMAND))))
    assert inject_then_render == render_then_inject


def test_injecting_twice_changes_nothing(fixture_text: str) -> None:
    once = inject_documents(fixture_text, SKIP)
    assert inject_documents(once, SKIP) == once
    rendered = inject_documents(render(fixture_text), SKIP)
    assert inject_documents(rendered, SKIP) == rendered


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_result_is_valid_kubernetes(fixture_text: str, version: str) -> None:
    for doc in load_all(render(inject_documents(fixture_text, SKIP))):
        kubernetes_validate.validate(doc, version, strict=True)


def test_unusual_layouts_are_re_emitted_correctly() -> None:
    """Flow-style initContainers cannot take a block item: the document is re-emitted, still right."""
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: setup}}\n"
        "spec: {initContainers: [{name: a, image: busybox, command: [sh, -c, 'echo hi']}],"
        " containers: [{name: b, image: busybox, command: [\"true\"]}]}\n"
    )
    out = inject_documents(text)
    spec = load_all(out)[0]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == [SIDECAR_NAME, "a"]
    assert spec["initContainers"][1]["command"] == [LOGWRAP_PATH, "a", "--", "sh", "-c", "echo hi"]
    assert spec["containers"][0]["command"] == [LOGWRAP_PATH, "b", "--", "true"]
    assert inject_documents(out) == out
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(load_all(out)[0], version, strict=True)


def test_inject_pod_spec_on_plain_dicts() -> None:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {"name": "blast", "image": "ncbi/elb:1.3.0", "command": ["/bin/bash", "-c"], "args": ["blastn -version"]},
            {"name": "entry", "image": "ncbi/elb:1.3.0"},
        ],
    }
    original = copy.deepcopy(spec)
    warnings: list[str] = []
    options = InjectOptions(skip_containers=frozenset({"entry"}))
    out = inject_pod_spec(spec, options=options, labels={"app": "setup", "elb-job-id": "j1"}, warnings=warnings)
    assert spec == original
    assert out["initContainers"][0]["name"] == SIDECAR_NAME
    assert {e["name"]: e.get("value") for e in out["initContainers"][0]["env"]}["BLAST_LOGS_PHASE"] == "staging_db"
    assert out["containers"][0]["command"] == [LOGWRAP_PATH, "blast", "--", "/bin/bash", "-c"]
    assert out["containers"][0]["args"] == ["blastn -version"]
    assert out["containers"][1] == original["containers"][1]
    assert any("'entry'" in w for w in warnings)
    assert inject_pod_spec(out, options=options, labels={"app": "setup", "elb-job-id": "j1"}) == out
    for version in K8S_VERSIONS:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": out},
                                     version, strict=True)


@pytest.mark.parametrize(
    "spec_yaml, needle",
    [
        ("  volumes:\n  - name: blast-logs\n    hostPath: {path: /tmp}\n"
         "  containers:\n  - {name: a, image: x, command: [sh]}\n", "volume is already named"),
        ("  volumes:\n  - name: blast-logs\n    emptyDir: {}\n"
         "  containers:\n  - {name: a, image: x, command: [sh]}\n", "volume is already named"),
        ("  volumes:\n  - {name: other, emptyDir: {}}\n"
         "  containers:\n  - name: a\n    image: x\n    command: [sh]\n"
         "    volumeMounts: [{name: other, mountPath: /var/run/blast-logs/}]\n", "collides"),
        ("  containers:\n  - {name: blast-logs-shipper, image: x, command: [sh]}\n", "not the blast-logs shipper"),
        ("  initContainers:\n  - {name: blast-logs-shipper, image: x, restartPolicy: Always}\n"
         "  containers:\n  - {name: a, image: x, command: [sh]}\n", "not the blast-logs shipper"),
        ("  containers: {name: a}\n", "must be a list"),
    ],
    ids=["hostpath-volume", "foreign-emptydir", "mount-path", "container-name", "init-name", "malformed"],
)
def test_refuses_collisions_and_writes_nothing(spec_yaml: str, needle: str, tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\n" \
           "metadata: {name: p}\nspec:\n" + spec_yaml
    load_all(text)  # the input itself is valid YAML
    with pytest.raises(InjectError, match=needle):
        inject_documents(text)
    path = tmp_path / "in.yaml"
    path.write_text(text)
    code, out, err = run_main(["-f", str(path)])
    assert code == 1 and out == ""
    assert needle in err and "document 2 (Pod p)" in err


def test_refuses_invalid_yaml() -> None:
    code, out, err = run_main(["-f", "-"], "apiVersion: v1\nkind: Pod\nspec: [unclosed\n")
    assert code == 1 and out == ""
    assert "invalid YAML" in err and "line" in err


def test_command_line_reads_stdin_and_names_unwrapped_containers() -> None:
    text = (FIXTURES[0].parent / "submit-and-janitor.yaml").read_text()
    code, out, err = run_main(["-f", "-", "--phase", "running", "--token-secret", "t-${ELB_JOB_ID}",
                               "--skip-container", "${K8S_JOB_SUBMIT_JOBS}"], text)
    assert code == 0, err
    assert out == inject_documents(text, InjectOptions(phase="running", token_secret="t-${ELB_JOB_ID}",
                                                       skip_containers=frozenset({"${K8S_JOB_SUBMIT_JOBS}"})))
    assert "'${K8S_JOB_SUBMIT_JOBS}' skipped" in err


def test_command_line_usage_errors() -> None:
    assert main(["--phase", "Not A Phase", "-f", str(FIXTURES[0])]) == 2
    assert main(["--no-such-flag"]) == 2
    assert main(["-f", "/nonexistent/file.yaml"]) == 1


@pytest.mark.parametrize("kind, api", [("Deployment", "apps/v1"), ("StatefulSet", "apps/v1")])
def test_deployments_and_statefulsets_are_injected(kind: str, api: str) -> None:
    extra = "  serviceName: s\n" if kind == "StatefulSet" else ""
    text = (
        f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: w\nspec:\n  replicas: ${{REPLICAS}}\n{extra}"
        "  selector:\n    matchLabels: {app: blast}\n  template:\n    metadata:\n      labels: {app: blast}\n"
        "    spec:\n      containers:\n      - name: worker\n        image: busybox\n"
        "        command: [sh, -c, 'sleep 1']\n"
    )
    out = inject_documents(text)
    spec = load_all(out)[0]["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["name"] == SIDECAR_NAME
    assert spec["containers"][0]["command"] == [LOGWRAP_PATH, "worker", "--", "sh", "-c", "sleep 1"]
    assert "replicas: ${REPLICAS}\n" in out
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(load_all(render(out, {"REPLICAS": "2"}))[0], version, strict=True)
