{{- /* The operator's command line and environment (the operator's CLI contract). */ -}}
{{- define "sealtune.operatorArgs" -}}
{{- if .Values.watchNamespaces }}
{{- range .Values.watchNamespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
- --peering
- {{ .Values.peeringName | quote }}
- --priority
- auto
- --metrics-port
- {{ .Values.metrics.port | quote }}
- --health-port
- {{ .Values.health.port | quote }}
{{- end }}

{{- define "sealtune.operatorEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SEALTUNE_OPERATOR_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SEALTUNE_ENCRYPTING_STORAGE_CLASSES
  value: {{ join "," .Values.encryptingStorageClasses | quote }}
- name: SEALTUNE_TRAINER_IMAGE
  value: {{ include "sealtune.image" (dict "image" .Values.trainerImage "root" .) | quote }}
- name: SEALTUNE_IMAGE_PULL_SECRETS
  value: {{ join "," .Values.workloadImagePullSecrets | quote }}
- name: SEALTUNE_SERVE_IMAGE
  value: {{ include "sealtune.image" (dict "image" .Values.serveImage "root" .) | quote }}
- name: SEALTUNE_VLLM_IMAGE
  value: {{ include "sealtune.image" (dict "image" .Values.vllmImage "root" .) | quote }}
{{- end }}

