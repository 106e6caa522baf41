{{/*
Chart name, truncated to the 63 characters a label allows.
*/}}
{{- define "profile-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: <release>-<chart>, or the release name when it already contains the
chart name.
*/}}
{{- define "profile-consumer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "profile-consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of the release (never add the version here).
*/}}
{{- define "profile-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "profile-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "profile-consumer.labels" -}}
helm.sh/chart: {{ include "profile-consumer.chart" . }}
{{ include "profile-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: profile-consumer
app.kubernetes.io/component: consumer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "profile-consumer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "profile-consumer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: [registry/]repository(:tag|@digest), the registry being
global.imageRegistry or else image.registry.
*/}}
{{- define "profile-consumer.image" -}}
{{- $repo := .Values.image.repository }}
{{- /* A parent chart's global.imageRegistry (a mirror for every image) wins over image.registry. */}}
{{- $registry := (.Values.global | default dict).imageRegistry | default .Values.image.registry }}
{{- if $registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the pods read, or "" when there is none.
*/}}
{{- define "profile-consumer.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- include "profile-consumer.fullname" . }}
{{- end }}
{{- end }}

{{/*
Secret-backed settings: values/keys name -> environment variable the consumer reads.
kafka.config keys use librdkafka's dotted names: ..__CONFIG__SASL_PASSWORD -> sasl.password.
*/}}
{{- define "profile-consumer.secretEnvNames" -}}
targetToken: PROFILE_CONSUMER__TARGET__TOKEN
targetProxy: PROFILE_CONSUMER__TARGET__PROXY
kafkaSaslUsername: PROFILE_CONSUMER__KAFKA__CONFIG__SASL_USERNAME
kafkaSaslPassword: PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD
kafkaSslKeyPassword: PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PASSWORD
kafkaSslCaPem: PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CA_PEM
kafkaSslCertificatePem: PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CERTIFICATE_PEM
kafkaSslKeyPem: PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PEM
{{- end }}

{{/*
The drain timeout as a whole number of seconds (rounded up).
*/}}
{{- define "profile-consumer.shutdownTimeout" -}}
{{- $cfg := .Values.config.pipeline | default dict }}
{{- $timeout := 20 }}
{{- if hasKey $cfg "shutdown_timeout_seconds" }}
{{- $timeout = $cfg.shutdown_timeout_seconds }}
{{- end }}
{{- ceil $timeout | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: explicit (checked to exceed the drain timeout) or drain + 10.
*/}}
{{- define "profile-consumer.terminationGracePeriodSeconds" -}}
{{- $drain := include "profile-consumer.shutdownTimeout" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 10 }}
{{- else }}
{{- $grace := .Values.terminationGracePeriodSeconds | int }}
{{- if le $grace $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.pipeline.shutdown_timeout_seconds (%d): the pod would be killed while draining" $grace $drain) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/*
The metrics/health port the container listens on.
*/}}
{{- define "profile-consumer.metricsPort" -}}
{{- $cfg := .Values.config.metrics | default dict }}
{{- if hasKey $cfg "port" }}{{ $cfg.port | int }}{{ else }}9400{{ end }}
{{- end }}

{{/*
librdkafka settings that hold secrets: refused in the ConfigMap.
*/}}
{{- define "profile-consumer.checkNoSecrets" -}}
{{- $kafka := .Values.config.kafka | default dict }}
{{- range $key, $_ := ($kafka.config | default dict) }}
{{- if regexMatch "(?i)(password|secret|key\\.pem)" $key }}
{{- fail (printf "config.kafka.config.%s is a secret: it must not go into the ConfigMap; put it in a Secret (see `secrets`)" $key) }}
{{- end }}
{{- end }}
{{- if hasKey (.Values.config.target | default dict) "token" }}
{{- fail "config.target.token must not go into the ConfigMap; set secrets.values.targetToken or use secrets.existingSecret" }}
{{- end }}
{{- end }}

{{/*
The rendered config.yaml. mapping.rules always points at the mounted rules file.
*/}}
{{- define "profile-consumer.configYaml" -}}
{{- include "profile-consumer.checkNoSecrets" . }}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $_ := set $config "mapping" (dict "rules" "/etc/profile-consumer/mapping.yaml") }}
{{- toYaml $config }}
{{- end }}

{{/*
The rendered mapping.yaml.
*/}}
{{- define "profile-consumer.mappingYaml" -}}
{{- .Values.mapping.rules | trimSuffix "\n" }}
{{- end }}

{{/*
Bootstrap servers KEDA connects to.
*/}}
{{- define "profile-consumer.kedaBootstrapServers" -}}
{{- .Values.keda.bootstrapServers | default .Values.config.kafka.bootstrap_servers }}
{{- end }}

{{/*
The ConfigMap the pods mount: the user's (existingConfigMap) or the one the chart renders.
*/}}
{{- define "profile-consumer.configMapName" -}}
{{- .Values.existingConfigMap | default (include "profile-consumer.fullname" .) }}
{{- end }}

{{/*
Whether to render the PodDisruptionBudget: "true" or "". `auto` means whenever more than one pod
can run (fixed replicas, or an autoscaler allowed above one): with a single pod a budget would
block every node drain.
*/}}
{{- define "profile-consumer.pdbEnabled" -}}
{{- $mode := .Values.podDisruptionBudget.enabled | toString }}
{{- if eq $mode "true" }}true
{{- else if eq $mode "auto" }}
{{- $max := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- $max = int .Values.autoscaling.maxReplicas }}
{{- else if .Values.keda.enabled }}
{{- $max = include "profile-consumer.kedaMaxReplicas" . | int }}
{{- end }}
{{- if gt $max 1 }}true{{ end }}
{{- end }}
{{- end }}

{{/*
KEDA's replica cap: keda.maxReplicaCount, never above keda.partitionCount (a consumer beyond the
partitions gets none and sits idle); null means keda.partitionCount.
*/}}
{{- define "profile-consumer.kedaMaxReplicas" -}}
{{- $k := .Values.keda }}
{{- $max := int $k.partitionCount }}
{{- if not (kindIs "invalid" $k.maxReplicaCount) }}
{{- $max = min (int $k.maxReplicaCount) $max }}
{{- end }}
{{- $max }}
{{- end }}

{{/*
The TCP port of a URL: the explicit one, else 443 for https and 80 for http. Parsed by hand:
sprig's urlParse panics on a `${NAME}` reference in the userinfo, which target.proxy allows.
*/}}
{{- define "profile-consumer.urlPort" -}}
{{- $url := trim . }}
{{- $authority := regexReplaceAll "^(?:[A-Za-z][A-Za-z0-9+.-]*://)?([^/?#]*).*$" $url "${1}" }}
{{- $hostPort := regexReplaceAll "^.*@" $authority "" }}
{{- if regexMatch ":[0-9]+$" $hostPort }}
{{- regexFind "[0-9]+$" $hostPort }}
{{- else if hasPrefix "https://" (lower $url) }}443
{{- else }}80
{{- end }}
{{- end }}

{{/*
Egress ports of a list of URLs (comma-separated inside each), deduplicated, as a YAML list.
*/}}
{{- define "profile-consumer.urlPorts" -}}
{{- $ports := list }}
{{- range $value := . }}
{{- range $url := splitList "," ($value | toString) }}
{{- if trim $url }}
{{- $ports = append $ports (include "profile-consumer.urlPort" $url | int) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (uniq $ports) }}
{{- end }}

{{/*
Environment variable for a librdkafka property read from a Secret: sasl.password ->
PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD (the consumer turns `_` back into `.`).
*/}}
{{- define "profile-consumer.kafkaPropertyEnv" -}}
{{- if not (regexMatch "^[a-z][a-z0-9]*(\\.[a-z0-9]+)*$" .) }}
{{- fail (printf "kafka.secrets: %q is not a librdkafka property name (e.g. sasl.password)" .) }}
{{- end }}
{{- printf "PROFILE_CONSUMER__KAFKA__CONFIG__%s" (. | upper | replace "." "_") }}
{{- end }}

{{/*
Environment variables set from kafka.secrets entries (those without mountPath), as YAML:
env name -> {secret, key, optional}.
*/}}
{{- define "profile-consumer.kafkaSecretEnv" -}}
{{- $env := dict }}
{{- range $entry := .Values.kafka.secrets }}
{{- if not $entry.mountPath }}
{{- range $key, $property := $entry.items }}
{{- $name := include "profile-consumer.kafkaPropertyEnv" $property }}
{{- if hasKey $env $name }}
{{- fail (printf "kafka.secrets: librdkafka property %s is read from two Secret keys" $property) }}
{{- end }}
{{- $_ := set $env $name (dict "secret" $entry.name "key" $key "optional" ($entry.optional | default false)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
Refuse kafka.secrets mounts that would clash with each other or with the chart's own mounts.
*/}}
{{- define "profile-consumer.checkKafkaSecretMounts" -}}
{{- $seen := dict "/etc/profile-consumer" "the config" "/tmp" "the writable /tmp" }}
{{- range $entry := .Values.kafka.secrets }}
{{- with $entry.mountPath }}
{{- $path := trimSuffix "/" . }}
{{- if hasKey $seen $path }}
{{- fail (printf "kafka.secrets: mountPath %s is already used by %s" $path (get $seen $path)) }}
{{- end }}
{{- $_ := set $seen $path (printf "the Secret %s" $entry.name) }}
{{- end }}
{{- end }}
{{- end }}
