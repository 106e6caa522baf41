{{/*
Helpers of the PrometheusRule (alerts/rules.yaml is rendered with `tpl` and calls these).
*/}}

{{/*
The scrape job of this release: the ServiceMonitor sets no jobLabel, so Prometheus names the job
after the Service, which is unique per release in a namespace.
*/}}
{{- define "profile-consumer.alertJob" -}}
{{- .Values.prometheusRule.job | default (include "profile-consumer.fullname" .) }}
{{- end }}

{{/*
Label matchers that keep one release's series: its job in its namespace. Two releases in one
namespace never mix their figures, and each release's rules see only its own series.
*/}}
{{- define "profile-consumer.alertSelector" -}}
job="{{ include "profile-consumer.alertJob" . }}", namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
The labels of one alert: its severity wins over its own labels, which win over the chart-wide
extraLabels.
Called with (dict "root" $ "alert" <prometheusRule.alerts entry>).
*/}}
{{- define "profile-consumer.alertLabels" -}}
{{- $own := deepCopy (.alert.labels | default dict) }}
{{- $extra := deepCopy (.root.Values.prometheusRule.extraLabels | default dict) }}
{{- $labels := merge (dict "severity" .alert.severity) $own $extra }}
{{- toYaml $labels }}
{{- end }}

{{/*
The absolute runbook link of one alert. Called with (dict "root" $ "alert" "AlertName").
*/}}
{{- define "profile-consumer.runbookUrl" -}}
{{- printf "%s#%s" (include "profile-consumer.runbookBaseUrl" .root) (lower .alert) }}
{{- end }}

{{/*
prometheusRule.runbookBaseUrl, required and absolute: Alertmanager cannot open a relative link.
*/}}
{{- define "profile-consumer.runbookBaseUrl" -}}
{{- $base := .Values.prometheusRule.runbookBaseUrl | default "" }}
{{- if not (regexMatch "^https?://[^/]+" $base) }}
{{- fail (printf "prometheusRule.runbookBaseUrl must be the absolute URL of docs/runbook.md (e.g. https://github.com/<org>/profile-consumer/blob/v%s/docs/runbook.md) so that every alert's runbook_url opens from Alertmanager; got %q" .Chart.AppVersion $base) }}
{{- end }}
{{- trimSuffix "/" $base }}
{{- end }}
