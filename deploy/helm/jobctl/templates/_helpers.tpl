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
{{- if .Values.worker.enabled }}
{{- if not .Values.worker.image.repository }}
{{- fail "worker.enabled needs worker.image.repository: your worker's image" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (lt (int .Values.worker.autoscaling.maxReplicas) (int .Values.worker.autoscaling.minReplicas)) }}
{{- fail "worker.autoscaling.maxReplicas must be at least worker.autoscaling.minReplicas" }}
{{- end }}
{{- end }}
{{- end }}
