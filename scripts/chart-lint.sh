#!/usr/bin/env bash
# Lints and renders the operator's Helm chart, offline (Helm from .tools/bin, nothing downloaded).
#
#   1. the chart's crds/ are the generated ones (make crds writes both copies);
#   2. helm lint --strict with the default values and with every ci/*-values.yaml;
#   3. helm template of each, checked for the objects the operator needs;
#   4. values.schema.json refuses wrong values with a message naming the key;
#   5. NOTES.txt renders and tells the next step;
#   6. the chart's appVersion (the images' tag) is the workspace's version.
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

# The chart's appVersion is the images' version (`make images` tags them with it, the default
# values name it): the binaries in them report the workspace's version, so the two are one.
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$chart/Chart.yaml")
workspace_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $app_version && $app_version == "$workspace_version" ]] \
  || fail "$chart/Chart.yaml appVersion '$app_version' is not the workspace's version '$workspace_version' (Cargo.toml)"

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
  # Prometheus alert templates ({{ $labels.x }}) and Grafana legends ({{pod}}) are meant to stay.
  # shellcheck disable=SC2016 # the pattern names a literal $labels
  if grep -nE '\{\{|\}\}|<no value>' "$out" | grep -vE 'x-kubernetes|\{\{ \$labels\.|"legendFormat": ' >/dev/null; then
    fail "unrendered template text ($label)"
  fi
  echo "chart-lint: ok ($label): $(grep -c '^kind: ' "$out") objects"
done

# With every feature on, every optional object is rendered.
out="$work/all.yaml"
"$helm" template parley "$chart" --namespace parley-system -f "$chart/ci/all-features-values.yaml" >"$out"
for kind in ServiceMonitor PodMonitor PrometheusRule ConfigMap NetworkPolicy; do
  grep -q "^kind: $kind\$" "$out" || fail "no $kind rendered with ci/all-features-values.yaml"
done
grep -q '^    grafana_dashboard: "1"$' "$out" || fail "the dashboard ConfigMap lacks the label grafana_dashboard: \"1\""

# 4. Wrong values fail with a message that names the key (and the chart's own guards hold).
expect_refused() {
  local want=$1
  shift
  if "$helm" template parley "$chart" "$@" >/dev/null 2>"$work/err.txt"; then
    fail "helm template $* succeeded; values.schema.json should refuse it"
  fi
  grep -qF -- "$want" "$work/err.txt" || {
    cat "$work/err.txt" >&2
    fail "helm template $* failed without naming '$want'"
  }
}
expect_refused "replicaCount: Invalid type. Expected: integer, given: string" --set replicaCount=abc
expect_refused "Additional property replicas is not allowed" --set replicas=2
expect_refused "image.pullPolicy must be one of the following" --set image.pullPolicy=Sometimes
expect_refused "leaseDurationSeconds: Must be greater than or equal to 2" --set leaseDurationSeconds=1
expect_refused "logFormat must be one of the following" --set logFormat=xml
expect_refused "metrics.serviceMonitor.enabled: Invalid type. Expected: boolean" --set metrics.serviceMonitor.enabled=yes
expect_refused "metrics.serviceMonitor.interval: Invalid type. Expected: string" --set metrics.serviceMonitor.interval=30
expect_refused "prometheusRule.storeSyncSlowSeconds: Must be greater than 0" --set prometheusRule.storeSyncSlowSeconds=0
expect_refused "networkPolicy.apiServer.ports.0: Invalid type" --set 'networkPolicy.apiServer.ports[0]=https'
expect_refused "resources.requests.cpu: Does not match pattern" --set resources.requests.cpu=lots
expect_refused "Additional property enable is not allowed" --set prometheusRule.enable=true
expect_refused "podSecurityContext.runAsNonRoot does not match: true" --set podSecurityContext.runAsNonRoot=false
expect_refused "securityContext.allowPrivilegeEscalation does not match: false" --set securityContext.allowPrivilegeEscalation=true
expect_refused "securityContext.capabilities.drop" --set 'securityContext.capabilities.drop[0]=NET_RAW'
expect_refused "podSecurityContext.seccompProfile.type must be one of the following" --set podSecurityContext.seccompProfile.type=Unconfined
expect_refused "the ServiceMonitor scrapes the operator through its metrics Service" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
echo "chart-lint: ok (values.schema.json refuses wrong values by name)"

# 5. NOTES.txt: helm renders it only against a cluster, so render it here as a template of a copy.
notes_chart="$work/notes/parley-operator"
mkdir -p "$work/notes"
cp -r "$chart" "$notes_chart"
{
  echo '{{- define "notes-check" }}'
  cat "$chart/templates/NOTES.txt"
  echo '{{- end }}'
  echo 'notes: {{ include "notes-check" . | toJson }}'
} >"$notes_chart/templates/notes-check.yaml"
rm "$notes_chart/templates/NOTES.txt"
for values in "" "$chart/ci/namespaced-values.yaml" "$chart/ci/all-features-values.yaml"; do
  args=()
  [[ -n "$values" ]] && args=(-f "$values")
  notes=$("$helm" template parley "$notes_chart" --namespace parley-system "${args[@]}" \
    --show-only templates/notes-check.yaml) || fail "NOTES.txt does not render (${values:-default values})"
  for want in "examples/kubernetes/small.yaml" "kubectl" "--for=condition=Ready communicationsdomain/corp" \
    ".status.conditions"; do
    grep -qF -- "$want" <<<"$notes" || fail "NOTES.txt does not mention $want (${values:-default values})"
  done
done
echo "chart-lint: ok (NOTES.txt renders and names the next step)"
