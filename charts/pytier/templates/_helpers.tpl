{{/* Labels on every object of the chart. */}}
{{- define "pytier.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: pytier
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* An image reference: repository:tag, the tag defaulting to appVersion. */}}
{{- define "pytier.image" -}}
{{ .image.repository }}:{{ .image.tag | default .chart.AppVersion }}
{{- end }}

{{/* The webhook's Service DNS name, which its certificate is made for. */}}
{{- define "pytier.webhookHost" -}}
pytier-operator.{{ .Release.Namespace }}.svc
{{- end }}
