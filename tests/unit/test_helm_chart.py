"""The Helm chart: helm/check.sh (helm lint, helm template with default and non-default values,
Kubernetes schema validation), then what the rendered manifests must say for cstore to work.

Slow the first time on a machine: check.sh builds helm with `go install` (minutes on a cold Go
cache); afterwards the binary is cached under .local/bin and the whole module takes seconds.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cstore.config import load_config
from cstore.config import resolve_profile

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "helm" / "check.sh"
CHART = REPO / "helm" / "cstore"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, object]:
    """Runs helm/check.sh once; returns {"helm": path, "default"|"ci"|"multidc": [objects]}."""
    out = tmp_path_factory.mktemp("helm")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(CHECK), str(out)], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"helm/check.sh failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}\n{proc.stdout[-3000:]}",
                    pytrace=False)
    result: dict[str, object] = {"helm": (out / "HELM").read_text().strip(), "log": proc.stdout}
    for name in ("default", "ci", "multidc"):
        result[name] = [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d]
    return result


def one(objs, kind: str, component: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and
             (component is None or o["metadata"]["labels"].get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"expected one {kind} ({component}), found {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objs) -> list[str]:
    return sorted(o["kind"] for o in objs)


def container(obj: dict) -> dict:
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def load_rendered_config(objs, tmp_path: Path, component: str = "worker"):
    """Load the rendered cstore.toml with the container's environment through cstore's own loader,
    exactly as the pod would (secret-backed variables get stand-in values)."""
    cm_name = {"worker": "config", "schema": "schema"}[component]
    cm = one(objs, "ConfigMap", cm_name)
    toml = tmp_path / f"{component}.toml"
    toml.write_text(cm["data"]["cstore.toml"])
    pod = one(objs, "Deployment") if component == "worker" else one(objs, "Job", "schema")
    env = {}
    for e in container(pod)["env"]:
        env[e["name"]] = e.get("value", f"<from secret {e.get('valueFrom', {}).get('secretKeyRef', {}).get('name')}>")
    assert env.pop("CSTORE_CONFIG") == "/etc/cstore/cstore.toml"
    return load_config(env=env, config_file=str(toml)), env


def test_check_script_lints_renders_and_validates(rendered):
    log = rendered["log"]
    for name in ("default", "ci", "multidc"):
        assert f"ok: {name} values: lint, template" in log
    assert "all chart checks passed (helm v3." in log
    assert kinds(rendered["default"]) == ["ConfigMap", "ConfigMap", "Deployment", "Job", "PodDisruptionBudget",
                                          "ServiceAccount"]
    assert kinds(rendered["ci"]) == ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "Job",
                                     "PodDisruptionBudget", "ServiceAccount"]


def test_default_worker_deployment(rendered, tmp_path):
    objs = rendered["default"]
    dep = one(objs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]
    c = container(dep)
    assert spec["replicas"] == 2
    assert c["args"] == ["worker", "--model", "fraud", "--processes", "1", "--batch-size", "5000",
                         "--max-wait-ms", "200", "--metrics-port", "9108"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["spec"]["terminationGracePeriodSeconds"] == 60
    assert pod["spec"]["enableServiceLinks"] is False  # no CSTORE_* service-link variables in the pod
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9108"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # the selector matches the pods, and the PodDisruptionBudget selects the same pods
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert one(objs, "PodDisruptionBudget")["spec"]["selector"] == spec["selector"]
    cfg, env = load_rendered_config(objs, tmp_path)
    assert cfg.contact_points == ("cassandra.cassandra.svc.cluster.local",)
    assert (cfg.keyspace, cfg.profile, cfg.replication_factor, cfg.username) == ("cstore", "strong", 3, None)
    assert env == {"CSTORE_LOG_FORMAT": "json", "CSTORE_LOG_LEVEL": "INFO"}


def test_schema_hook_runs_cstore_schema_apply_before_the_release(rendered, tmp_path):
    objs = rendered["default"]
    job, cm = one(objs, "Job", "schema"), one(objs, "ConfigMap", "schema")
    assert container(job)["args"] == ["schema", "apply"]
    for obj in (job, cm):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # the hook's own ConfigMap is created before the Job (hooks run before the release's ConfigMap exists)
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"] == one(objs, "ConfigMap", "config")["data"]
    worker_cfg, _ = load_rendered_config(objs, tmp_path)
    schema_cfg, _ = load_rendered_config(objs, tmp_path, "schema")
    assert schema_cfg == worker_cfg


def test_non_default_values(rendered, tmp_path):
    objs = rendered["ci"]
    dep = one(objs, "Deployment")
    c, pod = container(dep), dep["spec"]["template"]["spec"]
    assert "replicas" not in dep["spec"], "with autoscaling on, the HPA owns the replica count"
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Resource", "External"]
    assert c["args"][:8] == ["-v", "worker", "--model", "fraud_v2", "--model", "fraud_v2_shadow", "--group", "blue"]
    assert c["args"][-4:] == ["--metrics-port", "9200", "--max-wait-ms", "75"]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert c["readinessProbe"]["httpGet"]["port"] == "metrics" and c["ports"][0]["containerPort"] == 9200
    # credentials only by reference to the Secret, never as values
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert secret_env == {"CSTORE_USERNAME": {"name": "cassandra-credentials", "key": "user"},
                          "CSTORE_PASSWORD": {"name": "cassandra-credentials", "key": "pass"}}
    # TLS files from the Secret, mounted where cstore.toml says they are
    tls_vol = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_vol["secret"]["secretName"] == "cassandra-tls"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    cfg, env = load_rendered_config(objs, tmp_path)
    assert cfg.username == "<from secret cassandra-credentials>"
    for path in (cfg.ssl_ca, cfg.ssl_cert, cfg.ssl_key):
        assert Path(path).parent == Path(mount["mountPath"])
    assert (cfg.local_dc, dict(cfg.replication_dcs), cfg.port) == ("dc1", {"dc1": 3, "dc2": 3}, 9142)
    assert (cfg.history_ttl_s, cfg.max_retries, cfg.request_timeout_s) == (1209600, 20, 2.5)
    profile = resolve_profile(cfg.profile, cfg.profiles)
    assert (profile.levels["read_model"], profile.levels["commit_chunk"], profile.serial) == (
        "LOCAL_ONE", "LOCAL_QUORUM", "LOCAL_SERIAL")
    locust = next(o for o in objs if o["kind"] == "Job" and o["metadata"]["labels"][
        "app.kubernetes.io/component"] == "loadtest")
    lc = container(locust)
    assert lc["command"] == ["locust"]
    assert lc["args"][:10] == ["--locustfile", "/opt/cstore/locustfiles/scoring.py", "--headless", "--users", "200",
                               "--spawn-rate", "20", "--run-time", "15m", "--only-summary"]
    assert container(one(objs, "Job", "schema"))["args"] == ["schema", "apply", "--dc", "dc1:3", "--dc", "dc2:3"]


def test_multidc_example(rendered, tmp_path):
    cfg, _ = load_rendered_config(rendered["multidc"], tmp_path)
    assert (cfg.profile, cfg.local_dc, dict(cfg.replication_dcs)) == ("local", "dc1", {"dc1": 3, "dc2": 3})
    assert resolve_profile(cfg.profile, cfg.profiles).serial == "LOCAL_SERIAL"
    assert cfg.ssl_ca and cfg.username


def test_the_schema_validator_catches_broken_manifests(rendered):
    """Guards the guard: the strict schema check rejects a misspelt field and a wrong type."""
    import kubernetes_validate
    dep = one(rendered["default"], "Deployment")
    kubernetes_validate.validate(dep, "1.25.0", strict=True)
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.25.0", strict=True)
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, "1.25.0", strict=True)


@pytest.mark.parametrize("sets, reason", [
    (["worker.model="], "worker.model is required"),
    (["cassandra.tls.enabled=true"], "cassandra.tls.enabled needs cassandra.tls.existingSecret"),
    (["cassandra.keyspace=Bad-Name"], "use lower-case letters"),
    (["worker.logFormat=xml"], "worker.logFormat must be text or json"),
    (["autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"],
     "minReplicas must not exceed"),
])
def test_bad_values_fail_with_a_clear_reason(rendered, sets, reason):
    args = [rendered["helm"], "template", "x", str(CHART)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert reason in proc.stderr


def test_worker_flags_used_by_the_chart_exist(rendered):
    """Every option the chart passes to the worker must be an option of `cstore worker`."""
    from cstore.cli import main
    worker = main.commands["worker"]
    known = {opt for p in worker.params for opt in p.opts}
    args = container(one(rendered["ci"], "Deployment"))["args"]
    used = [a for a in args[args.index("worker"):] if re.match(r"^--[a-z]", a)]
    missing = sorted(set(used) - known)
    assert not missing, f"flags the chart passes but `cstore worker` lacks: {missing}"
    assert {"--model", "--group", "--processes", "--batch-size", "--max-wait-ms", "--metrics-port"} <= set(used)


def test_schema_job_flags_exist():
    from click.testing import CliRunner
    from cstore.cli import main
    res = CliRunner().invoke(main, ["schema", "apply", "--dc", "dc1:3", "--dc", "dc2:3", "--help"])
    assert res.exit_code == 0 and "--dc" in res.output


def test_install_notes_render(rendered, tmp_path):
    """NOTES.txt is shown after `helm install`; render it (helm template does not) through a copy
    of the chart that wraps it in a ConfigMap."""
    import shutil
    chart = tmp_path / "cstore"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n'
        '  notes: {{ include "test.notes" . | toJson }}\n')
    texts = {}
    for name, extra in (("default", []), ("ci", ["-f", str(CHART / "ci-values.yaml")])):
        proc = subprocess.run([rendered["helm"], "template", "cstore", str(chart), "--namespace", "ml",
                               "--show-only", "templates/notes.yaml", *extra],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        texts[name] = yaml.safe_load(proc.stdout)["data"]["notes"]
    assert 'model(s) fraud are deploying as cstore (2 pod(s))' in texts["default"]
    assert "port-forward deploy/cstore 9108" in texts["default"]
    assert "no Cassandra credentials are configured" in texts["default"]
    assert "fraud_v2, fraud_v2_shadow" in texts["ci"] and "3–12 pods, autoscaled" in texts["ci"]
    assert "logs -f job/cstore-ci-locust-1" in texts["ci"] and "local DC dc1" in texts["ci"]
