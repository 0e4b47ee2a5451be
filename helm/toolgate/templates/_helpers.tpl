{{/* Names and labels. */}}
{{- define "toolgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "toolgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "toolgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Deployment's selector: unchanged since 0.1 (a selector cannot change in place). */}}
{{- define "toolgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "toolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "toolgate.labels" -}}
helm.sh/chart: {{ include "toolgate.chart" . }}
{{ include "toolgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "gateway" "agent" (eq .Values.mode "standalone") }}
{{- end -}}

{{/* The Secret the gateway's secretEnv variables are read from. */}}
{{- define "toolgate.secretName" -}}
{{- default (printf "%s-upstreams" (include "toolgate.fullname" .)) .Values.secret.name -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the digest wins when set. */}}
{{- define "toolgate.imageRef" -}}
{{- $image := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels of the agent pods of a standalone gateway (a YAML map). */}}
{{- define "toolgate.agentPodLabels" -}}
{{- if .Values.agents.podLabels -}}
{{- toYaml .Values.agents.podLabels -}}
{{- else -}}
toolgate.io/gateway: {{ include "toolgate.fullname" . }}
{{- end -}}
{{- end -}}

{{/* "true" when every replica shares one PostgreSQL store; "" for per-pod SQLite. */}}
{{- define "toolgate.sharedStore" -}}
{{- if or (hasPrefix "postgres" (toString .Values.config.store)) .Values.postgresql.dsnSecret.name (hasKey .Values.secretEnv "TOOLGATE_STORE") -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the gateway runs as a native sidecar (an init container that keeps running). */}}
{{- define "toolgate.native" -}}
{{- if and (eq .Values.mode "sidecar") .Values.gateway.nativeSidecar -}}
true
{{- end -}}
{{- end -}}

{{/* The replicas the Deployment may run (for the shared-state checks): HPA max or replicaCount. */}}
{{- define "toolgate.maxReplicas" -}}
{{- if and (eq .Values.mode "standalone") .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.maxReplicas | int -}}
{{- else -}}
{{- .Values.replicaCount | int -}}
{{- end -}}
{{- end -}}

{{/* Shutdown arithmetic, in whole seconds. */}}
{{- define "toolgate.preStopSeconds" -}}
{{- if kindIs "invalid" .Values.gateway.preStopSleepSeconds -}}
{{- ternary 0 5 (eq (include "toolgate.native" .) "true") -}}
{{- else -}}
{{- .Values.gateway.preStopSleepSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* SIGTERM to exit: shutdown.delay_ms + shutdown.drain_ms, rounded up (gateway defaults 0 and 15000). */}}
{{- define "toolgate.drainSeconds" -}}
{{- $shutdown := .Values.config.shutdown | default dict -}}
{{- $delay := ternary (get $shutdown "delay_ms") 0 (hasKey $shutdown "delay_ms") | int -}}
{{- $drain := ternary (get $shutdown "drain_ms") 15000 (hasKey $shutdown "drain_ms") | int -}}
{{- div (add $delay $drain 999) 1000 -}}
{{- end -}}

{{/* What the grace period must cover: preStop, then the gateway's drain, plus 10 s to exit (background work and held calls being sent get 5 s each). */}}
{{- define "toolgate.requiredGraceSeconds" -}}
{{- add (include "toolgate.preStopSeconds" . | int) (include "toolgate.drainSeconds" . | int) 10 -}}
{{- end -}}

{{- define "toolgate.graceSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- max 30 (include "toolgate.requiredGraceSeconds" . | int) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* The decision rule's Data API path as a Rego array: data.toolgate.decision → ["v1", "data", "toolgate", "decision"]. */}}
{{- define "toolgate.opaDecisionPath" -}}
{{- $query := dig "policy" "query" "data.toolgate.decision" .Values.config -}}
{{- concat (list "v1" "data") (splitList "." (trimPrefix "data." $query)) | toJson -}}
{{- end -}}

{{/* The pod checksums: a change rolls the pods. Specs and policies are left out when the pods
reload them live (config.policy.watch_ms > 0; with OPA, OPA's policies still roll them). */}}
{{- define "toolgate.checksums" -}}
checksum/config: {{ include "toolgate.configData" . | sha256sum }}
{{- $watch := dig "policy" "watch_ms" 0 .Values.config | int }}
{{- if eq $watch 0 }}
checksum/tool-specs: {{ toJson .Values.toolSpecs | sha256sum }}
{{- end }}
{{- if or (eq $watch 0) .Values.opa.enabled }}
checksum/policies: {{ toJson .Values.policies | sha256sum }}
{{- end }}
{{- if .Values.secret.create }}
checksum/secret: {{ toJson .Values.secret.stringData | sha256sum }}
{{- end }}
{{- end -}}
