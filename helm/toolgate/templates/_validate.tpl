{{/*
Checks across values that values.schema.json cannot express. Each one stops a release that
would not run as asked: the gateway would refuse the config at start (a crash loop), the
cluster would reject the object, or replicas would silently disagree about state.
Included by configmap.yaml, which every mode renders.
*/}}
{{- define "toolgate.validate" -}}
{{- $v := .Values -}}
{{- $standalone := eq $v.mode "standalone" -}}
{{- $kube := .Capabilities.KubeVersion.Version -}}

{{- /* Kubernetes: the chart's claim also holds for `helm template` (install checks it too). */ -}}
{{- if not (semverCompare .Chart.KubeVersion $kube) -}}
{{- fail (printf "this chart needs Kubernetes %s; the target is %s" .Chart.KubeVersion $kube) -}}
{{- end -}}
{{- if eq (include "toolgate.native" .) "true" -}}
{{- if not (semverCompare ">=1.29.0-0" $kube) -}}
{{- fail (printf "gateway.nativeSidecar needs Kubernetes >= 1.29 (sidecar containers: an init container with restartPolicy: Always); the target is %s. Set gateway.nativeSidecar=false, or pass --kube-version to `helm template`" $kube) -}}
{{- end -}}
{{- end -}}
{{- if and $standalone $v.gateway.nativeSidecar -}}
{{- fail "gateway.nativeSidecar applies to mode: sidecar; in standalone mode the gateway is the pod's main container" -}}
{{- end -}}

{{- /* The agent (sidecar mode). */ -}}
{{- if and (not $standalone) (not $v.agent.image.repository) -}}
{{- fail "agent.image.repository is required in sidecar mode: the image of the agent that uses the gateway (or set mode: standalone)" -}}
{{- end -}}

{{- /* Specs, upstreams, policies. */ -}}
{{- $name := "^[a-z0-9][a-z0-9_.-]*$" -}}
{{- if not $v.config.upstreams -}}
{{- fail "config.upstreams is empty: name every upstream your tool specs use" -}}
{{- end -}}
{{- if not $v.toolSpecs -}}
{{- fail "toolSpecs is empty: add tool specs, e.g. --set-file toolSpecs.get_order=tool_specs/get_order.yaml" -}}
{{- end -}}
{{- range $file, $_ := $v.toolSpecs -}}
{{- if not (regexMatch $name $file) -}}
{{- fail (printf "toolSpecs.%s: names are [a-z0-9_.-] (the file becomes tool_specs/<name>.yaml)" $file) -}}
{{- end -}}
{{- end -}}
{{- range $file, $_ := $v.policies.rego -}}
{{- if not (regexMatch $name $file) -}}
{{- fail (printf "policies.rego.%s: names are [a-z0-9_.-] (the file becomes policies/<name>.rego)" $file) -}}
{{- end -}}
{{- end -}}

{{- /* The policy engine. An OPA URL on this pod's loopback with no OPA sidecar would leave the
gateway unready forever; a sidecar and a URL elsewhere would be two engines. */ -}}
{{- $engine := dig "policy" "engine" "embedded" $v.config -}}
{{- $opaUrl := dig "policy" "opa_url" "" $v.config -}}
{{- if $v.opa.enabled -}}
{{- if and (eq $engine "embedded") (hasKey ($v.config.policy | default dict) "engine") -}}
{{- fail "opa.enabled runs an OPA sidecar for policy.engine: opa, but config.policy.engine is embedded: remove config.policy.engine (the chart sets it) or set opa.enabled=false" -}}
{{- end -}}
{{- if $opaUrl -}}
{{- fail (printf "opa.enabled sets config.policy.opa_url to the OPA sidecar (http://127.0.0.1:%d); remove config.policy.opa_url=%s" (int $v.opa.port) $opaUrl) -}}
{{- end -}}
{{- else if eq $engine "opa" -}}
{{- if not $opaUrl -}}
{{- fail "config.policy.engine is opa but there is no OPA to ask: set opa.enabled=true (an OPA sidecar with the chart's policies), or config.policy.opa_url to your OPA service (http://opa.<namespace>.svc:8181)" -}}
{{- end -}}
{{- if regexMatch "^https?://(127\\.[0-9.]+|localhost|\\[::1\\])(:[0-9]+)?/?$" $opaUrl -}}
{{- fail (printf "config.policy.opa_url %s is this pod's loopback, where nothing listens without the OPA sidecar: set opa.enabled=true, or point opa_url at your OPA service" $opaUrl) -}}
{{- end -}}
{{- end -}}
{{- if and (not $v.policies.rego) (or $v.opa.enabled (eq $engine "embedded")) -}}
{{- fail "policies.rego is empty: add the policy, e.g. --set-file policies.rego.toolgate=policies/toolgate.rego" -}}
{{- end -}}

{{- /* Exactly one token-verification key source. */ -}}
{{- $auth := $v.config.auth | default dict -}}
{{- $sources := list -}}
{{- if $v.authKeys.jwks }}{{ $sources = append $sources "authKeys.jwks" }}{{ end -}}
{{- if $v.authKeys.publicKeyPem }}{{ $sources = append $sources "authKeys.publicKeyPem" }}{{ end -}}
{{- range $key := list "jwks_file" "jwks_url" "public_key_file" "hs256_secret_env" -}}
{{- if hasKey $auth $key }}{{ $sources = append $sources (printf "config.auth.%s" $key) }}{{ end -}}
{{- end -}}
{{- if ne (len $sources) 1 -}}
{{- fail (printf "give exactly one token-verification key source, got %d (%s): authKeys.jwks (--set-file authKeys.jwks=jwks.json), authKeys.publicKeyPem, config.auth.jwks_url (your IdP's JWKS endpoint) or config.auth.hs256_secret_env" (len $sources) (join ", " $sources)) -}}
{{- end -}}

{{- /* Every variable the config reads from the environment must be set in the gateway
container, or the gateway refuses to start. */ -}}
{{- $envNames := keys $v.secretEnv -}}
{{- range $e := $v.gateway.env }}{{ $envNames = append $envNames (toString $e.name) }}{{ end -}}
{{- $needed := dict -}}
{{- range $upstream, $u := $v.config.upstreams -}}
{{- with (dig "credential" "env" "" $u) }}{{ $_ := set $needed . (printf "config.upstreams.%s.credential.env" $upstream) }}{{ end -}}
{{- end -}}
{{- with (get $auth "hs256_secret_env") }}{{ $_ := set $needed . "config.auth.hs256_secret_env" }}{{ end -}}
{{- range $var, $where := $needed -}}
{{- if not (has $var $envNames) -}}
{{- fail (printf "%s names the variable %s, which the gateway container does not have: add it to secretEnv (%s: <key in the Secret>) or gateway.env" $where $var $var) -}}
{{- end -}}
{{- end -}}
{{- if and $v.secretEnv (not $v.secret.create) (not $v.secret.name) -}}
{{- fail "secretEnv needs a Secret: set secret.name (an existing Secret) or secret.create=true" -}}
{{- end -}}
{{- if and $v.postgresql.dsnSecret.name (hasKey $v.secretEnv "TOOLGATE_STORE") -}}
{{- fail "the store's DSN is given twice: postgresql.dsnSecret and secretEnv.TOOLGATE_STORE; keep one" -}}
{{- end -}}

{{- /* SECURITY: config.store goes into the ConfigMap. The schema refuses a password in it;
checked again here for a release installed with --skip-schema-validation. */ -}}
{{- $store := toString $v.config.store -}}
{{- if regexMatch "^postgres(ql)?://[^/?#@]*:[^/?#]*@|[?&]password=" $store -}}
{{- fail "config.store holds a password, which the ConfigMap would show to whoever may read it: put the whole DSN in a Secret and set postgresql.dsnSecret.name (and .key)" -}}
{{- end -}}

{{- /* SECURITY: an egress rule with no peer (`{}`, or only `ports`) allows every destination,
and an empty peer is none. The schema refuses both; checked again here. */ -}}
{{- range $list := list "egress" "agentEgress" -}}
{{- range $i, $rule := (get $v.networkPolicy $list).to -}}
{{- $peers := and (kindIs "map" $rule) (get $rule "to") -}}
{{- if not (and (kindIs "slice" $peers) $peers) -}}
{{- fail (printf "networkPolicy.%s.to[%d] names no peer (`to`), so it would allow egress to every destination: list the peers (namespaceSelector, podSelector, ipBlock); for the whole Internet say so, ipBlock 0.0.0.0/0" $list $i) -}}
{{- end -}}
{{- range $j, $peer := $peers -}}
{{- if not (and (kindIs "map" $peer) (or $peer.ipBlock (hasKey $peer "namespaceSelector") (hasKey $peer "podSelector"))) -}}
{{- fail (printf "networkPolicy.%s.to[%d].to[%d] is no peer: give a namespaceSelector, podSelector or ipBlock" $list $i $j) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Writable paths: the root filesystem and /etc/toolgate are read-only. */ -}}
{{- if and (hasPrefix "sqlite:" $store) (not (hasPrefix "sqlite:////" $store)) -}}
{{- fail (printf "config.store %s is relative to /etc/toolgate, which is read-only: use an absolute path on the state volume, sqlite:////var/lib/toolgate/state/toolgate.db" $store) -}}
{{- end -}}
{{- $auditFile := dig "audit" "file" "" $v.config -}}
{{- if not (hasPrefix "/" (toString $auditFile)) -}}
{{- fail (printf "config.audit.file must be an absolute path on a writable volume (e.g. /var/lib/toolgate/audit/toolgate.jsonl), got %q" (toString $auditFile)) -}}
{{- end -}}

{{- /* Replicas and state. */ -}}
{{- $replicas := include "toolgate.maxReplicas" . | int -}}
{{- if and $standalone (gt $replicas 1) (ne (include "toolgate.sharedStore" .) "true") -}}
{{- fail (printf "standalone mode with up to %d replicas needs the PostgreSQL store: behind one Service, an agent's retry, its run budget and its approval poll would reach replicas that share none of them. Set postgresql.dsnSecret.name (or config.store: postgresql://...), or replicaCount: 1 without autoscaling" $replicas) -}}
{{- end -}}
{{- if and $v.persistence.enabled (not $v.persistence.existingClaim) -}}
{{- fail "persistence.enabled needs persistence.existingClaim (a ReadWriteOnce PVC)" -}}
{{- end -}}
{{- if and $v.persistence.enabled (gt $replicas 1) -}}
{{- fail "persistence.enabled mounts one ReadWriteOnce claim, which one pod at a time can use: run one replica, or use the PostgreSQL store and persistence.enabled=false" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (not $standalone) -}}
{{- fail "autoscaling applies to mode: standalone (in sidecar mode, scale the agent's Deployment your way)" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas is greater than autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (not $v.autoscaling.targetCPUUtilizationPercentage) (not $v.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable)) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" -}}
{{- end -}}

{{- /* Ports. */ -}}
{{- $ports := list (int $v.gateway.ports.http) (int $v.gateway.ports.admin) -}}
{{- if $v.opa.enabled }}{{ $ports = concat $ports (list (int $v.opa.port) (int $v.opa.diagnosticPort)) }}{{ end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail (printf "the pod's ports collide (gateway.ports.http, gateway.ports.admin, opa.port, opa.diagnosticPort): %v" $ports) -}}
{{- end -}}

{{- /* Shutdown: the kubelet kills whatever still runs at the end of the grace period. */ -}}
{{- if not (kindIs "invalid" $v.terminationGracePeriodSeconds) -}}
{{- $required := include "toolgate.requiredGraceSeconds" . | int -}}
{{- if lt (int $v.terminationGracePeriodSeconds) $required -}}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than the gateway's shutdown: preStop %ss + shutdown.delay_ms and drain_ms %ss + 10s to exit = %ds. Raise it, lower config.shutdown.drain_ms, or set it to null to have it computed" (int $v.terminationGracePeriodSeconds) (include "toolgate.preStopSeconds" .) (include "toolgate.drainSeconds" .) $required) -}}
{{- end -}}
{{- end -}}

{{- /* Metrics. */ -}}
{{- if and $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled -}}
{{- fail "monitoring: enable serviceMonitor or podMonitor, not both (Prometheus would scrape every pod twice)" -}}
{{- end -}}
{{- if and $v.monitoring.serviceMonitor.enabled (not $standalone) (not $v.service.enabled) -}}
{{- fail "monitoring.serviceMonitor needs a Service: in sidecar mode set service.enabled=true, or use monitoring.podMonitor" -}}
{{- end -}}
{{- end -}}
