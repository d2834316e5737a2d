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
    assert kinds(rendered["default"]) == ["ConfigMap", "ConfigMap", "Deployment", "Job", "Pod", "PodDisruptionBudget",
                                          "Service", "ServiceAccount"]
    assert kinds(rendered["ci"]) == ["ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                                     "Job", "Job",
                                     "Pod", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount",
                                     "ServiceMonitor"]


def test_default_worker_deployment(rendered, tmp_path):
    objs = rendered["default"]
    dep = one(objs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]
    c = container(dep)
    assert spec["replicas"] == 2
    assert c["args"] == ["worker", "--model", "fraud", "--processes", "1", "--batch-size", "5000",
                         "--max-wait-ms", "200", "--critical", "--stuck-after", "300", "--metrics-port", "9108"]
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
    known = {opt for p in worker.params for opt in (*p.opts, *p.secondary_opts)}
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



def test_metrics_service_and_helm_test_by_default(rendered):
    objs = rendered["default"]
    dep = one(objs, "Deployment")
    svc = one(objs, "Service")
    assert svc["metadata"]["name"].endswith("-metrics") and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9108, "targetPort": "metrics", "protocol": "TCP"}]
    test = one(objs, "Pod")
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test["spec"]["containers"][0]["args"] == ["schema", "status", "--json"]
    assert "ServiceMonitor" not in kinds(objs) and "PrometheusRule" not in kinds(objs)  # need the CRDs: opt-in


def test_monitoring_objects_credentials_per_role_and_the_key_ring(rendered):
    objs = rendered["ci"]
    svc, sm = one(objs, "Service"), one(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                        "scrapeTimeout": "10s"}]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for r in one(objs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert {"CstorePartitionLag", "CstoreNoLeasesHeld", "CstoreWorkerNotReady", "CstoreCommitConflicts",
            "CstoreBatchErrors", "CstoreDriftDetected", "CstoreGuardTripped", "CstoreGuardFailing",
            "CstoreScorerStale"} == set(rules)
    assert rules["CstorePartitionLag"]["expr"].endswith("> 120") and rules["CstorePartitionLag"]["for"] == "5m"

    def secrets(obj):
        return {e["valueFrom"]["secretKeyRef"]["name"] for e in container(obj)["env"] if "valueFrom" in e}

    def env(obj):
        return {e["name"]: e.get("value") for e in container(obj)["env"]}
    dep, schema_job = one(objs, "Deployment"), one(objs, "Job", "schema")
    locust = one(objs, "Job", "loadtest")
    assert (secrets(dep), secrets(schema_job), secrets(locust)) == (
        {"cassandra-credentials"}, {"cassandra-admin"}, {"cassandra-scorer"})
    for obj in (dep, locust):  # they read chunks: the key ring is mounted where the variable points
        path = env(obj)["CSTORE_ENCRYPTION_KEY_FILE"]
        vol = next(v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == "encryption-keys")
        mount = next(m for m in container(obj)["volumeMounts"] if m["name"] == "encryption-keys")
        assert vol["secret"]["secretName"] == "cstore-keys" and path == f"{mount['mountPath']}/keys"
    assert "CSTORE_ENCRYPTION_KEY_FILE" not in env(schema_job)
    args = container(dep)["args"]
    assert "--no-critical" in args and args[args.index("--min-batch") + 1] == "500"
    assert args[args.index("--feedback-of") + 1] == "fraud_v1"


@pytest.mark.parametrize("sets, reason", [
    (["worker.replcas=5"], "additional properties 'replcas' not allowed"),
    (["metrics.port=abc"], "got string, want integer"),
    (["cassandra.contactPoints=cass1", "worker.processes=0"], "minimum"),
])
def test_the_values_schema_refuses_unknown_keys_and_wrong_types(rendered, sets, reason):
    for cmd in (["lint", "--strict", str(CHART)], ["template", "x", str(CHART)]):
        args = [rendered["helm"], *cmd]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, cmd
        assert reason in proc.stdout + proc.stderr, (cmd, proc.stdout[-800:], proc.stderr[-800:])


def test_the_manifest_validator_catches_bad_monitoring_objects(rendered, tmp_path):
    sys.path.insert(0, str(REPO / "helm"))
    from validate_manifests import validate
    rule = one(rendered["ci"], "PrometheusRule")
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0]["expr"] = "cstore_no_such_series > 1"
    bad["spec"]["groups"][0]["rules"][1]["for"] = "ten minutes"
    monitor = copy.deepcopy(one(rendered["ci"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump_all([bad, monitor]))
    found = "\n".join(validate(f, "1.37.0"))
    assert "uses cstore_no_such_series, which cstore does not export" in found
    assert "'ten minutes' does not match" in found
    assert "'intervall' was unexpected" in found
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([rule]))
    assert validate(good, "1.37.0") == []



def test_the_dashboard_queries_only_series_cstore_exports(rendered):
    """Every metric a panel queries is one the workers or scorers export; the chart ships the same file."""
    import json
    sys.path.insert(0, str(REPO / "helm"))
    from validate_manifests import exported_metric_names
    path = CHART / "dashboards" / "cstore.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(cstore_[a-z0-9_]+)\b", e)}
    assert len(exprs) >= 15 and not used - exported_metric_names(), sorted(used - exported_metric_names())
    assert {"cstore_scorer_staleness_seconds", "cstore_partition_lag_seconds", "cstore_commit_conflicts_total"} <= used
    cm = next(o for o in rendered["ci"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard"))
    assert json.loads(cm["data"]["cstore.json"]) == dash and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
