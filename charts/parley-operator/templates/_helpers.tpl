{{/* Name of the chart, truncated to a label's length. */}}
{{- define "parley-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, unless it already contains the chart name. */}}
{{- define "parley-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "parley-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "parley-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "parley-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
{{- end }}

{{- define "parley-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "parley-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "parley-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "parley-operator.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) }}
{{- end }}

{{- define "parley-operator.directoryImage" -}}
{{- printf "%s:%s" .Values.directoryImage.repository (default .Chart.AppVersion .Values.directoryImage.tag) }}
{{- end }}

{{/* The rules the controllers need, shared by the ClusterRole and the namespaced Role. */}}
{{- define "parley-operator.rules" -}}
- apiGroups: ["parley.dev"]
  resources: ["communicationsdomains", "homeservers", "frontends"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["parley.dev"]
  resources: ["communicationsdomains/status", "homeservers/status", "frontends/status"]
  verbs: ["get", "update", "patch"]
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# A pod's Events (a volume that cannot be mounted, an image that cannot be pulled) say in the
# HomeServer's status why it is not ready.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
# The domain's CA and server certificates, the generated service-account password and the
# managed directory's admin Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Directory-prep Jobs, and their pods' termination messages for the status; a Home Server's pod
# on a node being drained is deleted (restarted elsewhere) by the operator, one at a time.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# The domains' NetworkPolicies (spec.networkPolicy).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# With spec.tls.issuerRef: cert-manager Certificates (when cert-manager is installed).
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
