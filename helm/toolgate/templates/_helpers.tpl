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

{{- define "toolgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "toolgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "toolgate.labels" -}}
helm.sh/chart: {{ include "toolgate.chart" . }}
{{ include "toolgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret the gateway's secretEnv variables are read from. */}}
{{- define "toolgate.secretName" -}}
{{- default (printf "%s-upstreams" (include "toolgate.fullname" .)) .Values.secret.name -}}
{{- end -}}

{{- define "toolgate.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) -}}
{{- end -}}

{{/*
Checks that stop a release that could not start: the gateway would refuse the same config
at start (unknown keys, no tool specs, no policy, a missing key file), but only after the
pod is scheduled. Included by configmap.yaml.
*/}}
{{- define "toolgate.validate" -}}
{{- $name := "^[a-z0-9][a-z0-9_.-]*$" -}}
{{- range $key := list "listen" "admin_listen" "tool_specs" "policies" -}}
{{- if hasKey $.Values.config $key -}}
{{- fail (printf "config.%s is set by the chart (sidecar ports, mounted specs and policies); remove it from your values" $key) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.config.upstreams -}}
{{- fail "config.upstreams is empty: name every upstream your tool specs use" -}}
{{- end -}}
{{- if not .Values.toolSpecs -}}
{{- fail "toolSpecs is empty: add tool specs, e.g. --set-file toolSpecs.get_order=tool_specs/get_order.yaml" -}}
{{- end -}}
{{- if not .Values.policies.rego -}}
{{- fail "policies.rego is empty: add the policy, e.g. --set-file policies.rego.toolgate=policies/toolgate.rego" -}}
{{- end -}}
{{- range $file, $_ := .Values.toolSpecs -}}
{{- if not (regexMatch $name $file) -}}
{{- fail (printf "toolSpecs.%s: names are [a-z0-9_.-] (the file becomes tool_specs/<name>.yaml)" $file) -}}
{{- end -}}
{{- end -}}
{{- range $file, $_ := .Values.policies.rego -}}
{{- if not (regexMatch $name $file) -}}
{{- fail (printf "policies.rego.%s: names are [a-z0-9_.-] (the file becomes policies/<name>.rego)" $file) -}}
{{- end -}}
{{- end -}}
{{- $auth := .Values.config.auth | default dict -}}
{{- if and (eq (toString (get $auth "jwks_file")) "/etc/toolgate/keys/jwks.json") (not .Values.authKeys.jwks) -}}
{{- fail "config.auth.jwks_file is the chart's mounted JWKS but authKeys.jwks is empty: --set-file authKeys.jwks=path/to/jwks.json" -}}
{{- end -}}
{{- if and (eq (toString (get $auth "public_key_file")) "/etc/toolgate/keys/public.pem") (not .Values.authKeys.publicKeyPem) -}}
{{- fail "config.auth.public_key_file is the chart's mounted key but authKeys.publicKeyPem is empty" -}}
{{- end -}}
{{- if not .Values.agent.image.repository -}}
{{- fail "agent.image.repository is required: the image of the agent that uses the gateway" -}}
{{- end -}}
{{- if and .Values.persistence.enabled (not .Values.persistence.existingClaim) -}}
{{- fail "persistence.enabled needs persistence.existingClaim (a ReadWriteOnce PVC)" -}}
{{- end -}}
{{- if and .Values.secretEnv (not .Values.secret.create) (not .Values.secret.name) -}}
{{- fail "secretEnv needs a Secret: set secret.name (an existing Secret) or secret.create=true" -}}
{{- end -}}
{{- end -}}

{{/* The gateway container; rendered under containers or, as a native sidecar, initContainers. */}}
{{- define "toolgate.gatewayContainer" -}}
- name: {{ .Values.gateway.name }}
  image: {{ include "toolgate.gatewayImage" . | quote }}
  imagePullPolicy: {{ .Values.gateway.image.pullPolicy }}
  {{- if .Values.gateway.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: ["serve", "--config", "/etc/toolgate/toolgate.yaml"]
  ports:
    # The agent-facing port (8080) listens on 127.0.0.1 only and is not declared here.
    - name: admin
      containerPort: {{ .Values.gateway.ports.admin | int }}
      protocol: TCP
  {{- if or .Values.secretEnv .Values.gateway.env }}
  # SECURITY: upstream credentials exist only in this container's environment, never the agent's.
  env:
    {{- range $var, $key := .Values.secretEnv }}
    - name: {{ $var }}
      valueFrom:
        secretKeyRef:
          name: {{ include "toolgate.secretName" $ }}
          key: {{ $key | quote }}
    {{- end }}
    {{- with .Values.gateway.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with .Values.gateway.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.gateway.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.gateway.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.gateway.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.gateway.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/toolgate
      readOnly: true
    - name: state
      mountPath: /var/lib/toolgate
    - name: gateway-tmp
      mountPath: /tmp
    {{- with .Values.gateway.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
