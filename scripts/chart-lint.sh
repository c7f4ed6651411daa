#!/usr/bin/env bash
# Lints and renders the operator's Helm chart, offline (Helm from .tools/bin, nothing downloaded).
#
#   1. the chart's crds/ are the generated ones (make crds writes both copies);
#   2. helm lint --strict with the default values and with every ci/*-values.yaml;
#   3. helm template of each, checked for the objects the operator needs.
#
# Every rendered object is also validated against the Kubernetes API types (k8s-openapi, v1.33)
# by `cargo test` (operator/src/chart_check.rs), which `make test` runs before this script.
set -euo pipefail

cd "$(dirname "$0")/.."
chart=charts/parley-operator

if [[ -x .tools/bin/helm ]]; then
  helm=.tools/bin/helm
elif command -v helm >/dev/null 2>&1; then
  helm=$(command -v helm)
else
  echo "chart-lint: no helm; run 'make deps'" >&2
  exit 1
fi

fail() {
  echo "chart-lint: $*" >&2
  exit 1
}

# 1. The CRDs shipped with the chart are the generated ones.
for f in crds/*.yaml; do
  cmp -s "$f" "$chart/crds/$(basename "$f")" || fail "$chart/crds/$(basename "$f") differs from $f; run 'make crds'"
done
for f in "$chart"/crds/*.yaml; do
  [[ -f "crds/$(basename "$f")" ]] || fail "$f is not generated; run 'make crds'"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 2 and 3, for the default values and each CI values file.
value_sets=("")
for v in "$chart"/ci/*-values.yaml; do
  [[ -e "$v" ]] && value_sets+=("$v")
done

for values in "${value_sets[@]}"; do
  label=${values:-default values}
  args=()
  [[ -n "$values" ]] && args=(-f "$values")
  "$helm" lint --strict "$chart" "${args[@]}" >"$work/lint.txt" 2>&1 || {
    cat "$work/lint.txt" >&2
    fail "helm lint failed ($label)"
  }
  out="$work/rendered.yaml"
  "$helm" template parley "$chart" --namespace parley-system --include-crds "${args[@]}" >"$out" ||
    fail "helm template failed ($label)"
  for kind in CustomResourceDefinition Deployment ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding; do
    grep -q "^kind: $kind\$" "$out" || fail "no $kind rendered ($label)"
  done
  [[ $(grep -c '^kind: CustomResourceDefinition$' "$out") -eq 3 ]] || fail "expected 3 CRDs ($label)"
  # Every document names its apiVersion, kind and metadata.name; no template left unrendered.
  awk -v label="$label" '
    /^---/ { if (doc && !(api && kind && name)) { bad = 1 } ; doc = 0; api = kind = name = 0; next }
    /^apiVersion: / { api = 1; doc = 1 }
    /^kind: / { kind = 1; doc = 1 }
    /^  name: / { name = 1 }
    END { if (doc && !(api && kind && name)) bad = 1; exit bad }
  ' "$out" || fail "a rendered document lacks apiVersion, kind or metadata.name ($label)"
  if grep -nE '\{\{|\}\}|<no value>' "$out" | grep -v 'x-kubernetes' >/dev/null; then
    fail "unrendered template text ($label)"
  fi
  echo "chart-lint: ok ($label): $(grep -c '^kind: ' "$out") objects"
done
