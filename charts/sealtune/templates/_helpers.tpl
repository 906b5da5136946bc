{{/*
Names are fixed (not derived from the release name): the operator, its RBAC and the
admission policy refer to each other by these names, and one operator runs per cluster.
*/}}
{{- define "sealtune.operatorName" -}}sealtune-operator{{- end }}

{{- define "sealtune.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "sealtune.operatorName" . }}
{{- end }}

{{- define "sealtune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sealtune.operatorName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: sealtune
{{- end }}

{{- define "sealtune.labels" -}}
{{ include "sealtune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; global.imageRegistry
replaces the registry of every image. A digest pins the image: repo:tag@sha256:...
Call with (dict "image" .Values.image "root" $).
*/}}
{{- define "sealtune.image" -}}
{{- $img := .image -}}
{{- $registry := .root.Values.global.imageRegistry | default $img.registry -}}
{{- $tag := $img.tag | default .root.Chart.AppVersion | toString -}}
{{- $ref := $img.repository -}}
{{- if $registry }}{{- $ref = printf "%s/%s" (trimSuffix "/" $registry) $img.repository -}}{{- end -}}
{{- if $tag }}{{- $ref = printf "%s:%s" $ref $tag -}}{{- end -}}
{{- if $img.digest }}{{- $ref = printf "%s@%s" $ref $img.digest -}}{{- end -}}
{{- $ref -}}
{{- end }}

{{/*
The operator's RBAC, in one table so the ClusterRole (all namespaces) and the
per-namespace Roles render exactly the same rules. Each rule says whether it is
namespaced; "sealtune.rbacRules" takes (dict "scope" "all"|"namespaced"|"cluster").
Secrets: create and delete ONLY; the operator can never read a key back.
*/}}
{{- define "sealtune.rbacTable" -}}
- namespaced: true
  apiGroups: ["sealtune.io"]
  resources: ["finetunejobs", "modelserves"]
  verbs: ["get", "list", "watch", "patch", "update"]
- namespaced: true
  apiGroups: ["sealtune.io"]
  resources: ["finetunejobs/status", "modelserves/status"]
  verbs: ["get", "patch", "update"]
- namespaced: true
  apiGroups: ["sealtune.io"]
  resources: ["finetunejobs/finalizers", "modelserves/finalizers"]
  verbs: ["update"]
- namespaced: true
  apiGroups: ["sealtune.io"]
  resources: ["privacybudgets"]
  verbs: ["get", "list", "watch"]
- namespaced: true
  apiGroups: ["sealtune.io"]
  resources: ["privacybudgets/status"]
  verbs: ["get", "patch"]
- namespaced: true
  apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
- namespaced: false
  apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
- namespaced: false
  apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- namespaced: false
  apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- namespaced: true
  apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- namespaced: true
  apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- namespaced: true
  apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- namespaced: true
  apiGroups: [""]
  resources: ["configmaps", "serviceaccounts", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- namespaced: true
  apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- namespaced: true
  apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- namespaced: true
  apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- namespaced: true
  apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "delete"]
- namespaced: true
  apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- namespaced: true
  apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
{{- end }}

{{- define "sealtune.rbacRules" -}}
{{- $scope := .scope -}}
{{- range $rule := (include "sealtune.rbacTable" . | fromYamlArray) }}
{{- if or (eq $scope "all") (and (eq $scope "namespaced") $rule.namespaced) (and (eq $scope "cluster") (not $rule.namespaced)) }}
- apiGroups: {{ toJson $rule.apiGroups }}
  resources: {{ toJson $rule.resources }}
  verbs: {{ toJson $rule.verbs }}
{{- end }}
{{- end }}
{{- end }}
