{{/* Common labels of every object. */}}
{{- define "enclave.labels" -}}
app.kubernetes.io/name: enclave
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Labels that select the operator pods. */}}
{{- define "enclave.selector" -}}
app.kubernetes.io/name: enclave
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator image reference: digest, else tag, else appVersion. */}}
{{- define "enclave.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* The rules of files/rbac.yaml (one commented source for the chart and the tests). */}}
{{- define "enclave.rules" -}}
{{- .Files.Get "files/rbac.yaml" | fromYaml | toJson -}}
{{- end }}

{{/* The operator configuration: the values' config plus what the chart owns. */}}
{{- define "enclave.config" -}}
{{- $owned := dict "operatorNamespace" .Release.Namespace "operatorImage" (include "enclave.image" .) -}}
{{- $rbac := dict "rbac" (dict "companyAdminClusterRole" .Values.companyAdminClusterRole) -}}
{{- $config := mustMergeOverwrite (deepCopy .Values.config) $owned -}}
{{- $config = mustMergeOverwrite $config (dict "rbac" (mustMergeOverwrite (deepCopy (.Values.config.rbac | default dict)) (dict "companyAdminClusterRole" .Values.companyAdminClusterRole "workspaceAccessClusterRole" "enclave-workspace-access" "operatorServiceAccount" "enclave"))) -}}
{{- toYaml $config -}}
{{- end }}
