{{/* The gateway container; under containers, or under initContainers as a native sidecar. */}}
{{- define "toolgate.gatewayContainer" -}}
{{- $v := .Values -}}
{{- $preStop := include "toolgate.preStopSeconds" . | int -}}
- name: {{ $v.gateway.name }}
  image: {{ include "toolgate.imageRef" (list $v.gateway.image .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $v.gateway.image.pullPolicy }}
  {{- if eq (include "toolgate.native" .) "true" }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
    - --config
    - /etc/toolgate/toolgate.yaml
    {{- if gt (int $v.gateway.workers) 1 }}
    - --workers
    - {{ $v.gateway.workers | int | quote }}
    {{- end }}
  ports:
    {{- if eq $v.mode "standalone" }}
    - name: http
      containerPort: {{ $v.gateway.ports.http | int }}
      protocol: TCP
    {{- else }}
    # The agent port listens on 127.0.0.1 only (sidecar mode) and is not declared.
    {{- end }}
    - name: admin
      containerPort: {{ $v.gateway.ports.admin | int }}
      protocol: TCP
  {{- if or $v.secretEnv $v.gateway.env $v.postgresql.dsnSecret.name }}
  # SECURITY: upstream credentials exist only in this container's environment, never the agent's.
  env:
    {{- range $var, $key := $v.secretEnv }}
    - name: {{ $var }}
      valueFrom:
        secretKeyRef:
          name: {{ include "toolgate.secretName" $ }}
          key: {{ $key | quote }}
    {{- end }}
    {{- with $v.postgresql.dsnSecret.name }}
    # The PostgreSQL DSN, password included; it overrides config.store.
    - name: TOOLGATE_STORE
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $v.postgresql.dsnSecret.key | quote }}
    {{- end }}
    {{- with $v.gateway.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if gt $preStop 0 }}
  lifecycle:
    # Keep serving while Services and the agent stop sending here; then SIGTERM starts the
    # gateway's own drain (config.shutdown). The image is Debian-based and has /bin/sleep.
    preStop:
      exec:
        command: ["/bin/sleep", {{ $preStop | quote }}]
  {{- end }}
  {{- with $v.gateway.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.gateway.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.gateway.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.gateway.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.gateway.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/toolgate
      readOnly: true
    - name: state
      mountPath: /var/lib/toolgate
    - name: gateway-tmp
      mountPath: /tmp
    {{- with $v.gateway.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The OPA sidecar: the REST API on loopback only, /health and /metrics on the diagnostic port
for the kubelet, the chart's policies, and an authorization policy that answers nothing but
the decision query. OPA's image has no shell for a preStop hook, so it waits itself
(--shutdown-wait-period) while the gateway drains, and keeps answering the gateway until then.
*/}}
{{- define "toolgate.opaContainer" -}}
{{- $v := .Values -}}
{{- $wait := add (include "toolgate.preStopSeconds" . | int) (include "toolgate.drainSeconds" . | int) -}}
- name: opa
  image: {{ include "toolgate.imageRef" (list $v.opa.image "") | quote }}
  imagePullPolicy: {{ $v.opa.image.pullPolicy }}
  {{- if eq (include "toolgate.native" .) "true" }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --server
    # SECURITY: loopback only; the gateway is the one client.
    - --addr=127.0.0.1:{{ $v.opa.port | int }}
    - --diagnostic-addr=0.0.0.0:{{ $v.opa.diagnosticPort | int }}
    - --authorization=basic
    # A ConfigMap volume's own entries (..data, ..<timestamp>) are hidden files.
    - --ignore=.*
    - --disable-telemetry
    - --log-format=json
    - --log-level={{ $v.opa.logLevel }}
    - --shutdown-wait-period={{ $wait }}
    - --shutdown-grace-period=5
    - /etc/opa/policies
    - /etc/opa/authz/authz.rego
  ports:
    - name: opa-diag
      containerPort: {{ $v.opa.diagnosticPort | int }}
      protocol: TCP
  {{- with $v.opa.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.opa.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.opa.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.opa.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.opa.securityContext | nindent 4 }}
  volumeMounts:
    - name: opa-policies
      mountPath: /etc/opa
      readOnly: true
{{- end -}}

{{/* The agent container (sidecar mode). */}}
{{- define "toolgate.agentContainer" -}}
{{- $a := .Values.agent -}}
- name: {{ $a.name }}
  image: "{{ $a.image.repository }}:{{ $a.image.tag }}"
  imagePullPolicy: {{ $a.image.pullPolicy }}
  {{- with $a.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    # The agent calls its tools here: the gateway in this pod, over loopback.
    - name: {{ $a.gatewayUrlEnv }}
      value: "http://127.0.0.1:{{ .Values.gateway.ports.http | int }}"
    {{- with $a.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $a.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $a.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if or $a.tmpVolume $a.volumeMounts }}
  volumeMounts:
    {{- if $a.tmpVolume }}
    - name: agent-tmp
      mountPath: /tmp
    {{- end }}
    {{- with $a.volumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}
