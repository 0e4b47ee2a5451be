{{/*
The ingress rules of the release pods' NetworkPolicy (networkpolicy.yaml), at column 0;
empty when no rule applies, and the policy then admits nothing. A rule is rendered only
with peers: an empty `from` would admit every source.
*/}}
{{- define "toolgate.ingressRules" -}}
{{- $v := .Values -}}
{{- $np := $v.networkPolicy -}}
{{- $standalone := eq $v.mode "standalone" -}}
{{- with $np.adminFrom }}
# The admin port (approvals, kill switch, /metrics): scrapers and approver tooling.
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: {{ $v.gateway.ports.admin | int }}
      protocol: TCP
{{- end }}
{{- if $standalone }}
# The agent port: the agent pods (agents.podLabels{{ if $v.agents.namespaceSelector }}, in the namespaces agents.namespaceSelector selects{{ end }}){{ if $np.agentsFrom }} and networkPolicy.agentsFrom{{ end }}.
- from:
    - podSelector:
        matchLabels:
          {{- include "toolgate.agentPodLabels" . | nindent 10 }}
      {{- with $v.agents.namespaceSelector }}
      namespaceSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- with $np.agentsFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - port: {{ $v.gateway.ports.http | int }}
      protocol: TCP
{{- else if $v.agent.ports }}
{{- $restricted := kindIs "slice" $np.agentPortsFrom }}
{{- if or (not $restricted) $np.agentPortsFrom }}
# The agent's own declared ports{{ if not $restricted }}, from every source (networkPolicy.agentPortsFrom is null){{ end }}.
- ports:
    {{- range $v.agent.ports }}
    - port: {{ .containerPort | int }}
      protocol: {{ .protocol | default "TCP" }}
    {{- end }}
  {{- if $restricted }}
  from:
    {{- toYaml $np.agentPortsFrom | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}
