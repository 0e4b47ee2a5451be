{{/*
toolgate.yaml: .Values.config with what the chart owns set on top of it.
- listen: 127.0.0.1 in sidecar mode (SECURITY: only this pod reaches the agent port), all
  interfaces in standalone mode (the Service and the NetworkPolicy decide who reaches it);
- admin_listen: all interfaces, so the kubelet's probes reach /healthz and /readyz;
- tool_specs, policies: the ConfigMap's directories;
- auth.jwks_file / public_key_file: the mounted authKeys, when given;
- policy.engine/opa_url: the OPA sidecar, with opa.enabled;
- forwarded_host (standalone, unless set): the Service's name, not 0.0.0.0.
*/}}
{{- define "toolgate.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $standalone := eq .Values.mode "standalone" -}}
{{- $_ := set $cfg "listen" (printf "%s:%d" (ternary "0.0.0.0" "127.0.0.1" $standalone) (int .Values.gateway.ports.http)) -}}
{{- $_ := set $cfg "admin_listen" (printf "0.0.0.0:%d" (int .Values.gateway.ports.admin)) -}}
{{- $_ := set $cfg "tool_specs" (list "/etc/toolgate/tool_specs/") -}}
{{- $_ := set $cfg "policies" (list "/etc/toolgate/policies/") -}}
{{- $auth := get $cfg "auth" | default dict -}}
{{- if .Values.authKeys.jwks -}}
{{- $_ := set $auth "jwks_file" "/etc/toolgate/keys/jwks.json" -}}
{{- end -}}
{{- if .Values.authKeys.publicKeyPem -}}
{{- $_ := set $auth "public_key_file" "/etc/toolgate/keys/public.pem" -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- if .Values.opa.enabled -}}
{{- $policy := get $cfg "policy" | default dict -}}
{{- $_ := set $policy "engine" "opa" -}}
{{- $_ := set $policy "opa_url" (printf "http://127.0.0.1:%d" (int .Values.opa.port)) -}}
{{- $_ := set $cfg "policy" $policy -}}
{{- end -}}
{{- if and $standalone (not (hasKey $cfg "forwarded_host")) -}}
{{- $_ := set $cfg "forwarded_host" (printf "%s.%s.svc:%d" (include "toolgate.fullname" .) .Release.Namespace (int .Values.gateway.ports.http)) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
The OPA sidecar's authorization policy (`opa run --authorization=basic`). SECURITY: in
sidecar mode the agent shares the pod's loopback, so OPA's REST API must not let it read
policy data or push a policy; it answers the gateway's decision query and its health only.
*/}}
{{- define "toolgate.opaAuthz" -}}
# Rendered by the toolgate chart: what OPA's REST API answers (--authorization=basic).
package system.authz

default allow := false

# The gateway's decision query: POST /v1/data/<config.policy.query as a path>.
allow if {
	input.method == "POST"
	input.path == {{ include "toolgate.opaDecisionPath" . }}
}

# The kubelet's probes and a metrics scraper, on the diagnostic port.
allow if {
	input.method == "GET"
	input.path in [["health"], ["metrics"]]
}
{{- end -}}

{{/* Everything in the ConfigMap but the specs and policies: a change here rolls the pods. */}}
{{- define "toolgate.configData" -}}
{{ include "toolgate.config" . }}
{{ .Values.authKeys.jwks }}
{{ .Values.authKeys.publicKeyPem }}
{{- if .Values.opa.enabled }}
{{ include "toolgate.opaAuthz" . }}
{{- end }}
{{- end -}}
