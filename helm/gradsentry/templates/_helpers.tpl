{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "gradsentry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it contains it. */}}
{{- define "gradsentry.fullname" -}}
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

{{- define "gradsentry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gradsentry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gradsentry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gradsentry.labels" -}}
helm.sh/chart: {{ include "gradsentry.chart" . }}
{{ include "gradsentry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: reliability
{{- end }}

{{- define "gradsentry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gradsentry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gradsentry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the chart mounts what it hands the server. */}}
{{- define "gradsentry.configDir" -}}/etc/gradsentry{{- end }}
{{- define "gradsentry.tlsDir" -}}/etc/gradsentry/tls{{- end }}
{{- define "gradsentry.authDir" -}}/etc/gradsentry/auth{{- end }}

{{/* True (non-empty) when the pod mounts the model volume. */}}
{{- define "gradsentry.hasModelVolume" -}}
{{- if or (eq .Values.mode "sidecar") .Values.modelVolume.enabled }}true{{ end }}
{{- end }}

{{/*
The server's drain grace in seconds (float): config.grace_seconds, or the server's own
default (10) when the key is removed.
*/}}
{{- define "gradsentry.graceSeconds" -}}
{{- if hasKey .Values.config "grace_seconds" }}
{{- float64 .Values.config.grace_seconds }}
{{- else }}
{{- 10.0 }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: strictly longer than the preStop sleep plus the drain grace,
so the kubelet's SIGKILL never cuts a drain short. Derived unless set; a set value that is not
long enough fails the render.
*/}}
{{- define "gradsentry.terminationGracePeriodSeconds" -}}
{{- $grace := include "gradsentry.graceSeconds" . | float64 }}
{{- $preStop := int .Values.lifecycle.preStopSleepSeconds }}
{{- $needed := addf $preStop $grace }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $preStop (ceil $grace | int) (int .Values.drainMarginSeconds) }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if le (float64 $set) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than lifecycle.preStopSleepSeconds + config.grace_seconds (%d + %g = %g s), or the server is killed while it drains" $set $preStop $grace $needed) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/*
The server's config file: the user's `config` plus the keys the chart owns (listen address,
ports, mounted TLS and token files, the GPU device). Setting an owned key in `config` fails.
*/}}
{{- define "gradsentry.config" -}}
{{- $owned := dict
  "host" "listenHost"
  "port" "ports.grpc"
  "metrics_port" "ports.metrics"
  "metrics_host" "metricsHost"
  "rest_enabled" "ports.rest"
  "rest_port" "ports.rest"
  "tls_cert_file" "tls.enabled and tls.certKey"
  "tls_key_file" "tls.enabled and tls.keyKey"
  "tls_client_ca_file" "tls.clientCAKey"
  "auth_token_file" "auth.enabled and auth.tokenKey" }}
{{- range $key := keys $owned | sortAlpha }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by the chart: use %s instead" $key (get $owned $key)) }}
{{- end }}
{{- end }}
{{- if .Values.kserve.enabled }}
{{- range $key := list "bundle" "model_factory" "model_format" "model_path" "model_weights" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "config.%s is set by kserve.model when kserve.enabled (the model is under /mnt/models)" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "host" .Values.listenHost }}
{{- $_ := set $cfg "port" (int .Values.ports.grpc) }}
{{- $_ := set $cfg "metrics_port" (int .Values.ports.metrics) }}
{{- $_ := set $cfg "metrics_host" .Values.metricsHost }}
{{- if not (kindIs "invalid" .Values.ports.rest) }}
{{- $_ := set $cfg "rest_enabled" true }}
{{- $_ := set $cfg "rest_port" (int .Values.ports.rest) }}
{{- end }}
{{- if and .Values.kserve.enabled (not (hasKey $cfg "model_name")) }}
{{- /* OIP clients address the model by the InferenceService's name, as with KServe's own runtimes. */}}
{{- $_ := set $cfg "model_name" (include "gradsentry.inferenceServiceName" .) }}
{{- end }}
{{- if and .Values.gpu.enabled (not (hasKey $cfg "device")) }}
{{- $_ := set $cfg "device" "cuda" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $cfg "tls_cert_file" (printf "%s/%s" (include "gradsentry.tlsDir" .) .Values.tls.certKey) }}
{{- $_ := set $cfg "tls_key_file" (printf "%s/%s" (include "gradsentry.tlsDir" .) .Values.tls.keyKey) }}
{{- if .Values.tls.clientCAKey }}
{{- $_ := set $cfg "tls_client_ca_file" (printf "%s/%s" (include "gradsentry.tlsDir" .) .Values.tls.clientCAKey) }}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $cfg "auth_token_file" (printf "%s/%s" (include "gradsentry.authDir" .) .Values.auth.tokenKey) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The gradsentry container's resources, with the GPU limit when gpu.enabled. */}}
{{- define "gradsentry.resources" -}}
{{- $res := deepCopy (default dict .Values.resources) }}
{{- if .Values.gpu.enabled }}
{{- $limits := deepCopy (default dict (get $res "limits")) }}
{{- $_ := set $limits .Values.gpu.resourceName (int .Values.gpu.count) }}
{{- with .Values.gpu.memory }}
{{- if .limit }}
{{- $_ := set $limits "memory" .limit }}
{{- end }}
{{- if .request }}
{{- $requests := deepCopy (default dict (get $res "requests")) }}
{{- $_ := set $requests "memory" .request }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- end }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Checks across values that values.schema.json cannot express. */}}
{{- define "gradsentry.validate" -}}
{{- if eq (int .Values.ports.grpc) (int .Values.ports.metrics) }}
{{- fail (printf "ports.grpc and ports.metrics must differ (both %d)" (int .Values.ports.grpc)) }}
{{- end }}
{{- if not (kindIs "invalid" .Values.ports.rest) }}
{{- if has (int .Values.ports.rest) (list (int .Values.ports.grpc) (int .Values.ports.metrics)) }}
{{- fail (printf "ports.rest (%d) must differ from ports.grpc and ports.metrics" (int .Values.ports.rest)) }}
{{- end }}
{{- end }}
{{- if .Values.kserve.enabled }}
{{- range $key, $why := dict "autoscaling" "KServe scales the predictor: use kserve.minReplicas / kserve.maxReplicas" "keda" "KServe scales the predictor: use kserve.minReplicas / kserve.maxReplicas" "serviceMonitor" "KServe names the predictor's Service: scrape the pods (prometheus.kserve.io annotations) or add a PodMonitor" }}
{{- if (get $.Values $key).enabled }}
{{- fail (printf "kserve.enabled: turn %s.enabled off (%s)" $key $why) }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- fail "kserve.enabled needs mode standalone: KServe runs gradsentry as the model's predictor" }}
{{- end }}
{{- if gt (int .Values.kserve.minReplicas) (int .Values.kserve.maxReplicas) }}
{{- fail (printf "kserve.minReplicas (%d) must not exceed kserve.maxReplicas (%d)" (int .Values.kserve.minReplicas) (int .Values.kserve.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (null the other)" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (eq .Values.autoscaling.metric "cpu") (not (dig "requests" "cpu" "" (default dict .Values.resources))) }}
{{- fail "autoscaling.metric cpu needs resources.requests.cpu (utilisation is measured against it)" }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- range .Values.modelServer.ports }}
{{- if has .name (list "grpc" "metrics" "rest") }}
{{- fail (printf "modelServer.ports: the name %q is gradsentry's; pick another" .name) }}
{{- end }}
{{- if has (int .containerPort) (list (int $.Values.ports.grpc) (int $.Values.ports.metrics) (int (default 0 $.Values.ports.rest))) }}
{{- fail (printf "modelServer.ports: port %d is gradsentry's (ports.grpc / ports.metrics / ports.rest); pick another" (int .containerPort)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* A probe's timing fields from its values block. */}}
{{- define "gradsentry.probeTiming" -}}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/*
An exec probe that runs `gradsentry health` over TLS inside the container (the kubelet's
gRPC probes speak plaintext only). Takes (dict "root" $ "service" NAME "probe" PROBE_VALUES).
*/}}
{{- define "gradsentry.tlsHealthProbe" -}}
{{- $v := .root.Values }}
{{- $dir := include "gradsentry.tlsDir" .root }}
{{- $name := $v.tls.probeServerName | default (printf "%s.%s.svc" (include "gradsentry.fullname" .root) .root.Release.Namespace) }}
exec:
  command:
    - gradsentry
    - health
    - --target
    - {{ printf "127.0.0.1:%d" (int $v.ports.grpc) | quote }}
    - --tls-ca
    - {{ printf "%s/%s" $dir $v.tls.caKey | quote }}
    - --server-name
    - {{ $name | quote }}
    {{- if $v.tls.clientCAKey }}
    - --cert
    - {{ printf "%s/%s" $dir $v.tls.certKey | quote }}
    - --key
    - {{ printf "%s/%s" $dir $v.tls.keyKey | quote }}
    {{- end }}
    {{- if .service }}
    - --service
    - {{ .service | quote }}
    {{- end }}
    - --timeout
    - {{ .probe.timeoutSeconds | default 2 | quote }}
{{ include "gradsentry.probeTiming" .probe }}
{{- end }}

{{/* True (non-empty) when KServe runs the pods (no Deployment, Service, PDB or autoscaler). */}}
{{- define "gradsentry.kserve" -}}
{{- if .Values.kserve.enabled }}true{{ end }}
{{- end }}

{{/* The InferenceService's name: KServe's pods and Services, and the OIP model, are named after it. */}}
{{- define "gradsentry.inferenceServiceName" -}}
{{- .Values.kserve.inferenceServiceName | default (include "gradsentry.fullname" .) }}
{{- end }}

{{/* Labels of the gradsentry pods: the chart's own, or those KServe gives a predictor's pods. */}}
{{- define "gradsentry.podSelector" -}}
{{- if .Values.kserve.enabled }}
serving.kserve.io/inferenceservice: {{ include "gradsentry.inferenceServiceName" . }}
component: predictor
{{- else }}
{{- include "gradsentry.selectorLabels" . }}
{{- end }}
{{- end }}

{{/*
The gradsentry container's startup, liveness and readiness probes: the kubelet's native gRPC
probes on the health service, or with TLS `gradsentry health` run in the container.
*/}}
{{- define "gradsentry.probes" -}}
{{- if .Values.tls.enabled }}
# The kubelet's gRPC probes speak plaintext only: with TLS the same health checks
# run as `gradsentry health` in the container (NOT_SERVING while warming up or
# draining fails them, as with the gRPC probes).
startupProbe:
  {{- include "gradsentry.tlsHealthProbe" (dict "root" $ "service" "" "probe" .Values.probes.startup) | trim | nindent 2 }}
livenessProbe:
  {{- include "gradsentry.tlsHealthProbe" (dict "root" $ "service" "" "probe" .Values.probes.liveness) | trim | nindent 2 }}
readinessProbe:
  {{- include "gradsentry.tlsHealthProbe" (dict "root" $ "service" .Values.probes.readiness.service "probe" .Values.probes.readiness) | trim | nindent 2 }}
{{- else }}
startupProbe:
  grpc:
    port: {{ .Values.ports.grpc }}
  {{- include "gradsentry.probeTiming" .Values.probes.startup | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ .Values.ports.grpc }}
  {{- include "gradsentry.probeTiming" .Values.probes.liveness | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ .Values.ports.grpc }}
    service: {{ .Values.probes.readiness.service | quote }}
  {{- include "gradsentry.probeTiming" .Values.probes.readiness | nindent 2 }}
{{- end }}
{{- end }}
