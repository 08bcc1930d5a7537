{{/*
The chart name, or nameOverride.
*/}}
{{- define "jobctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart> (or the release name alone when it already
contains the chart name), or fullnameOverride. 63 characters at most (DNS
label); the worker adds "-worker", so that stays within 63 too.
*/}}
{{- define "jobctl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "jobctl.workerFullname" -}}
{{- printf "%s-worker" (include "jobctl.fullname" .) }}
{{- end }}

{{- define "jobctl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every resource carries.
*/}}
{{- define "jobctl.labels" -}}
helm.sh/chart: {{ include "jobctl.chart" . }}
app.kubernetes.io/name: {{ include "jobctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jobctl
{{- end }}

{{/*
Selector labels of the server Pods (stable across upgrades).
*/}}
{{- define "jobctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Selector labels of the worker Pods.
*/}}
{{- define "jobctl.workerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jobctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "jobctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobctl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the digest wins.
Call with (dict "image" .Values.image "default" .Chart.AppVersion).
*/}}
{{- define "jobctl.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (toString (default .default .image.tag)) }}
{{- end }}
{{- end }}

{{/*
The Secret and key the server reads JOBCTL_REDIS_URL from: the chart's own
when redis.url is set, else redis.existingSecret.
*/}}
{{- define "jobctl.redisSecretName" -}}
{{- if .Values.redis.url }}
{{- printf "%s-redis" (include "jobctl.fullname" .) }}
{{- else }}
{{- .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{- define "jobctl.redisSecretKey" -}}
{{- if .Values.redis.url -}}
redis-url
{{- else }}
{{- .Values.redis.existingSecretKey }}
{{- end }}
{{- end }}

{{/*
The gRPC address workers and the test Pod dial.
*/}}
{{- define "jobctl.grpcAddress" -}}
{{- printf "%s.%s.svc:%v" (include "jobctl.fullname" .) .Release.Namespace .Values.service.grpcPort }}
{{- end }}

{{/*
One file mounted from an existing Secret or ConfigMap, as an entry of
jobctl.serverFiles; nothing when neither is set.
Call with (dict "ref" {existingSecret, existingConfigMap, key} "volume" name "env" VAR).
*/}}
{{- define "jobctl.fileEntry" -}}
{{- if or .ref.existingSecret .ref.existingConfigMap }}
- volume: {{ .volume }}
  {{- if .ref.existingSecret }}
  secret: {{ .ref.existingSecret | quote }}
  {{- else }}
  configMap: {{ .ref.existingConfigMap | quote }}
  {{- end }}
  files:
    - {key: {{ .ref.key | quote }}, env: {{ .env }}}
{{- end }}
{{- end }}

{{/*
A kubernetes.io/tls Secret mounted as two files (tls.crt, tls.key).
*/}}
{{- define "jobctl.tlsEntry" -}}
{{- if .secret }}
- volume: {{ .volume }}
  secret: {{ .secret | quote }}
  files:
    - {key: tls.crt, env: {{ .certEnv }}}
    - {key: tls.key, env: {{ .keyEnv }}}
{{- end }}
{{- end }}

{{/*
The files the server reads, as a YAML list of {volume, secret|configMap,
files: [{key, env}]}; each volume is mounted read-only at
/etc/jobctl/<volume>, each file at /etc/jobctl/<volume>/<key>, and <env>
names its path. Use with fromYamlArray.
*/}}
{{- define "jobctl.serverFiles" -}}
{{- $a := .Values.auth }}
{{- include "jobctl.fileEntry" (dict "ref" $a.apiKeys "volume" "api-keys" "env" "JOBCTL_API_KEYS_FILE") }}
{{- include "jobctl.fileEntry" (dict "ref" $a.jwt.hs256Secret "volume" "jwt-hs256-secret" "env" "JOBCTL_JWT_HS256_SECRET_FILE") }}
{{- include "jobctl.fileEntry" (dict "ref" $a.jwt.publicKey "volume" "jwt-public-key" "env" "JOBCTL_JWT_PUBLIC_KEY_FILE") }}
{{- include "jobctl.fileEntry" (dict "ref" $a.jwt.jwks "volume" "jwt-jwks" "env" "JOBCTL_JWT_JWKS_FILE") }}
{{- if .Values.tls.enabled }}
{{- include "jobctl.tlsEntry" (dict "secret" .Values.tls.existingSecret "volume" "tls" "certEnv" "JOBCTL_TLS_CERT" "keyEnv" "JOBCTL_TLS_KEY") }}
{{- include "jobctl.fileEntry" (dict "ref" .Values.tls.clientCA "volume" "tls-client-ca" "env" "JOBCTL_TLS_CLIENT_CA") }}
{{- end }}
{{- if not .Values.redis.embedded }}
{{- include "jobctl.fileEntry" (dict "ref" .Values.redis.tls.ca "volume" "redis-ca" "env" "JOBCTL_REDIS_CA_CERT") }}
{{- include "jobctl.tlsEntry" (dict "secret" .Values.redis.tls.clientCertSecret "volume" "redis-client-cert" "certEnv" "JOBCTL_REDIS_CLIENT_CERT" "keyEnv" "JOBCTL_REDIS_CLIENT_KEY") }}
{{- end }}
{{- end }}

{{/*
Volumes and volume mounts for a list made by jobctl.serverFiles.
*/}}
{{- define "jobctl.fileVolumes" -}}
{{- range . }}
- name: {{ .volume }}
  {{- if .secret }}
  secret:
    secretName: {{ .secret }}
  {{- else }}
  configMap:
    name: {{ .configMap }}
  {{- end }}
    items:
      {{- range .files }}
      - key: {{ .key | quote }}
        path: {{ .key | quote }}
      {{- end }}
{{- end }}
{{- end }}

{{- define "jobctl.fileMounts" -}}
{{- range . }}
- name: {{ .volume }}
  mountPath: /etc/jobctl/{{ .volume }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "jobctl.fileEnv" -}}
{{- range $entry := . }}
{{- range .files }}
- name: {{ .env }}
  value: {{ printf "/etc/jobctl/%s/%s" $entry.volume .key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Whether JWTs are on ("true" or empty): named in auth.methods, or, with
auth.methods empty, a key given.
*/}}
{{- define "jobctl.jwtOn" -}}
{{- $a := .Values.auth }}
{{- $keys := or $a.jwt.hs256Secret.existingSecret $a.jwt.publicKey.existingSecret $a.jwt.publicKey.existingConfigMap $a.jwt.jwks.existingSecret $a.jwt.jwks.existingConfigMap }}
{{- if or (has "jwt" $a.methods) (and (empty $a.methods) $keys) }}true{{ end }}
{{- end }}

{{- define "jobctl.mtlsOn" -}}
{{- $ca := and .Values.tls.enabled (or .Values.tls.clientCA.existingSecret .Values.tls.clientCA.existingConfigMap) }}
{{- if or (has "mtls" .Values.auth.methods) (and (empty .Values.auth.methods) $ca) }}true{{ end }}
{{- end }}

{{/*
The port of otel.endpoint: its own, else 443 for https and 80 for http.
*/}}
{{- define "jobctl.otelPort" -}}
{{- $u := urlParse .Values.otel.endpoint }}
{{- if regexMatch ":[0-9]+$" $u.host }}
{{- regexFind "[0-9]+$" $u.host }}
{{- else if eq $u.scheme "https" }}443
{{- else }}80
{{- end }}
{{- end }}

{{/*
The OTEL_* environment shared by the server and the worker (the service
name aside).
*/}}
{{- define "jobctl.otelEnv" -}}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
{{- with .Values.otel.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- with .Values.otel.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The scheme workers dial the Service with.
*/}}
{{- define "jobctl.serverURL" -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.tls.enabled) (include "jobctl.grpcAddress" .) }}
{{- end }}

{{/*
Refuses values that cannot work together. Included by the server Deployment.
*/}}
{{- define "jobctl.validate" -}}
{{- if .Values.redis.embedded }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "redis.embedded keeps state in each Pod's memory: it needs replicaCount 1 and autoscaling.enabled false" }}
{{- end }}
{{- else if not (or .Values.redis.existingSecret .Values.redis.url) }}
{{- fail "set redis.existingSecret (a Secret holding the Redis URL) or redis.url; redis.embedded true runs without Redis, for a trial" }}
{{- end }}
{{- $stop := add (int .Values.server.shutdownGraceSeconds) (int .Values.preStopSleepSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $stop }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed server.shutdownGraceSeconds + preStopSleepSeconds (%d), or Kubernetes kills the server before it drains" (int .Values.terminationGracePeriodSeconds) $stop) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- $a := .Values.auth }}
{{- if and (has "none" $a.methods) (gt (len $a.methods) 1) }}
{{- fail "auth.methods: none cannot be combined with other methods" }}
{{- end }}
{{- if and (has "api-key" $a.methods) (not $a.apiKeys.existingSecret) }}
{{- fail "auth.methods contains api-key: set auth.apiKeys.existingSecret (a Secret holding the API keys file)" }}
{{- end }}
{{- if include "jobctl.jwtOn" . }}
{{- if not (or $a.jwt.hs256Secret.existingSecret $a.jwt.publicKey.existingSecret $a.jwt.publicKey.existingConfigMap $a.jwt.jwks.existingSecret $a.jwt.jwks.existingConfigMap) }}
{{- fail "auth.methods contains jwt: set a key (auth.jwt.hs256Secret, auth.jwt.publicKey or auth.jwt.jwks)" }}
{{- end }}
{{- if not (and $a.jwt.audience $a.jwt.issuer) }}
{{- fail "JWTs need auth.jwt.audience and auth.jwt.issuer: the server checks both" }}
{{- end }}
{{- end }}
{{- $clientCA := or .Values.tls.clientCA.existingSecret .Values.tls.clientCA.existingConfigMap }}
{{- if and (has "mtls" $a.methods) (not (and .Values.tls.enabled $clientCA)) }}
{{- fail "auth.methods contains mtls: set tls.enabled and tls.clientCA (the CA that signs client certificates)" }}
{{- end }}
{{- if and $clientCA (not .Values.tls.enabled) }}
{{- fail "tls.clientCA needs tls.enabled: client certificates come in the TLS handshake" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret with the server's certificate and key" }}
{{- end }}
{{- if and .Values.redis.embedded (or .Values.redis.tls.ca.existingSecret .Values.redis.tls.ca.existingConfigMap .Values.redis.tls.clientCertSecret) }}
{{- fail "redis.tls does not apply to redis.embedded" }}
{{- end }}
{{- if and .Values.otel.enabled (not .Values.otel.endpoint) }}
{{- fail "otel.enabled needs otel.endpoint (the OTLP gRPC collector, e.g. http://otel-collector:4317)" }}
{{- end }}
{{- if .Values.worker.enabled }}
{{- if not .Values.worker.image.repository }}
{{- fail "worker.enabled needs worker.image.repository: your worker's image" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (lt (int .Values.worker.autoscaling.maxReplicas) (int .Values.worker.autoscaling.minReplicas)) }}
{{- fail "worker.autoscaling.maxReplicas must be at least worker.autoscaling.minReplicas" }}
{{- end }}
{{- end }}
{{- end }}
