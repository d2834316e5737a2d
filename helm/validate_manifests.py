"""Validate rendered manifests: Kubernetes objects against the schemas kubernetes-validate carries for
a Kubernetes version (strict: unknown fields are errors), prometheus-operator objects
(monitoring.coreos.com/v1 ServiceMonitor, PrometheusRule) against helm/crd-schemas/, and every
PromQL metric name in a PrometheusRule against the names cstore exports.

    python helm/validate_manifests.py RENDERED.yaml KUBE_VERSION     # exit 1 and the reasons on failure
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CRD_SCHEMAS = {("monitoring.coreos.com/v1", kind):
               json.loads((HERE / "crd-schemas" / f"{kind.lower()}.json").read_text())
               for kind in ("ServiceMonitor", "PrometheusRule")}
_METRIC = re.compile(r"\b(cstore_[a-z0-9_]+)\b")


def exported_metric_names() -> set[str]:
    """Every series name cstore's workers and scorers expose (counters with their _total)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from cstore.ops import ScorerCollector, WorkerMetrics

    class _NoModels:  # a client with no model opened: the families, without samples
        log_queue = 0

        def models(self) -> dict[str, object]:
            return {}
    reg = CollectorRegistry()
    reg.register(ScorerCollector(_NoModels()))  # type: ignore[arg-type]
    text = generate_latest(WorkerMetrics("m").registry).decode() + generate_latest(reg).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_total"} if kind == "counter" else {name}
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def validate(path: Path, kube_version: str) -> list[str]:
    problems: list[str] = []
    known = exported_metric_names()
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"))
        where = f"{key[1]} {doc.get('metadata', {}).get('name')}"
        if key in CRD_SCHEMAS:
            for err in jsonschema.Draft7Validator(CRD_SCHEMAS[key]).iter_errors(doc):
                problems.append(f"{where}: {'/'.join(map(str, err.absolute_path))}: {err.message}")
            for group in doc.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    for name in set(_METRIC.findall(str(rule.get("expr", "")))) - known:
                        problems.append(f"{where}: rule {rule.get('alert') or rule.get('record')} uses {name}, "
                                        f"which cstore does not export")
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{where}: {exc.message} at {'/'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {key[0]} {key[1]} in Kubernetes {kube_version}")
    return problems


if __name__ == "__main__":
    found = validate(Path(sys.argv[1]), sys.argv[2])
    for p in found:
        print(f"ERROR {p}", file=sys.stderr)
    sys.exit(1 if found else 0)
