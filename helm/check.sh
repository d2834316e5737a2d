#!/usr/bin/env bash
# Checks the cstore chart: `helm lint --strict`, `helm template` with the default values, with
# ci-values.yaml (non-default: HPA, Locust job, auth and TLS secrets, multi-DC) and with the
# values-multidc.yaml example, then validates every rendered manifest (helm/validate_manifests.py):
# Kubernetes objects against the JSON schemas carried by kubernetes-validate (PyPI), strictly
# (unknown fields are errors), for the oldest Kubernetes the chart supports and the newest that
# kubernetes-validate knows; ServiceMonitor and PrometheusRule against helm/crd-schemas/, and the
# metric names in the alert rules against those cstore exports.
#
#   helm/check.sh [OUT_DIR]     rendered manifests go to OUT_DIR (default .local/helm-rendered)
#
# helm itself is built from source with `go install` through the Go module proxy and cached as
# .local/bin/helm-$HELM_VERSION (git-ignored); the first build takes minutes on a cold Go cache,
# later runs reuse the binary. Environment: HELM=/path/to/helm to use another binary,
# PYTHON=/path/to/python with kubernetes-validate installed (default .venv/bin/python).
set -euo pipefail

HELM_VERSION=v3.22.0
# helm's default Kubernetes version is set at link time (as its own Makefile does) from the
# k8s.io/client-go it is built with: v0.37 for helm v3.22.0, so Kubernetes 1.37.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
# Oldest (Chart.yaml kubeVersion) and newest Kubernetes the manifests are validated against.
KUBE_VERSIONS=(1.25.0 1.37.0)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$REPO/helm/cstore
OUT=${1:-$REPO/.local/helm-rendered}
HELM=${HELM:-$REPO/.local/bin/helm-$HELM_VERSION}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi

say() { echo "helm/check.sh: $*"; }
die() { echo "helm/check.sh: FAILED: $*" >&2; exit 1; }

build_helm() {
  command -v go >/dev/null 2>&1 ||
    die "no Go toolchain on PATH: helm $HELM_VERSION is built with 'go install' from the Go module proxy"
  local tmp start pkg ldflags
  tmp=$(mktemp -d)
  start=$SECONDS
  pkg=helm.sh/helm/v3
  ldflags="-s -w -X $pkg/internal/version.version=$HELM_VERSION"
  for p in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X $pkg/$p.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg/$p.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  say "building helm $HELM_VERSION: go install $pkg/cmd/helm@$HELM_VERSION (minutes on a cold Go cache)"
  if ! GOBIN=$tmp go install -ldflags "$ldflags" "$pkg/cmd/helm@$HELM_VERSION" >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    rm -rf "$tmp"
    die "go install of helm $HELM_VERSION failed (last lines above); GOPROXY=$(go env GOPROXY)"
  fi
  mkdir -p "$(dirname "$HELM")"
  mv "$tmp/helm" "$HELM.tmp.$$" && mv "$HELM.tmp.$$" "$HELM"   # atomic for concurrent runs
  rm -rf "$tmp"
  say "built $HELM in $((SECONDS - start)) s"
}

if [[ ! -x $HELM ]]; then
  build_helm
fi
version=$("$HELM" version --template '{{.Version}}' 2>&1) || die "$HELM does not run: $version"
[[ $version == "$HELM_VERSION" ]] || die "$HELM reports version '$version', expected $HELM_VERSION; delete it to rebuild"
"$PYTHON" -c 'import kubernetes_validate' 2>/dev/null ||
  die "kubernetes-validate is not installed for $PYTHON (it is in the 'test' extra: pip install -e '.[test]')"

mkdir -p "$OUT"
echo "$HELM" >"$OUT/HELM"
# name:values-file ("" = the chart's defaults)
SETS=("default:" "ci:$CHART/ci-values.yaml" "multidc:$CHART/values-multidc.yaml")
for set in "${SETS[@]}"; do
  name=${set%%:*}
  file=${set#*:}
  args=()
  [[ -n $file ]] && args=(-f "$file")
  if ! "$HELM" lint --strict "$CHART" "${args[@]}" >"$OUT/$name.lint" 2>&1; then
    cat "$OUT/$name.lint" >&2
    die "helm lint --strict failed with the $name values${file:+ ($file)}"
  fi
  if ! "$HELM" template cstore "$CHART" --namespace cstore "${args[@]}" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    cat "$OUT/$name.err" >&2
    die "helm template failed with the $name values${file:+ ($file)}"
  fi
  for kv in "${KUBE_VERSIONS[@]}"; do
    if ! "$PYTHON" "$REPO/helm/validate_manifests.py" "$OUT/$name.yaml" "$kv" >"$OUT/$name.validate-$kv" 2>&1; then
      cat "$OUT/$name.validate-$kv" >&2
      die "rendered manifests ($name values) are not valid Kubernetes $kv objects (see $OUT/$name.yaml)"
    fi
  done
  count=$(grep -c '^kind:' "$OUT/$name.yaml" || true)
  say "ok: $name values: lint, template ($count objects), schemas of Kubernetes ${KUBE_VERSIONS[*]}"
done
say "all chart checks passed (helm $HELM_VERSION)"
