{{/* The name of every object: the release's, or release-chart. */}}
{{- define "taglock.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "taglock.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "taglock.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The upstream URL: upstream.url, or the sidecar registry. */}}
{{- define "taglock.upstream" -}}
{{- if .Values.upstream.url -}}
{{- .Values.upstream.url -}}
{{- else if .Values.sidecarRegistry.enabled -}}
{{- printf "http://127.0.0.1:%v" .Values.sidecarRegistry.port -}}
{{- end -}}
{{- end -}}

{{/* taglock.yaml: what the chart decides, then .Values.config over it. */}}
{{- define "taglock.config" -}}
{{- $cfg := dict "listen" (printf "0.0.0.0:%v" .Values.port) "data" "/var/lib/taglock" -}}
{{- $_ := set $cfg "admin" (dict "socket" "/run/taglock/admin/taglock.sock") -}}
{{- $_ := set $cfg "log" (dict "format" "json") -}}
{{- $up := include "taglock.upstream" . -}}
{{- if $up -}}
{{- $_ := set $cfg "upstream" (dict "url" $up) -}}
{{- end -}}
{{- if eq .Values.ledger.backend "etcd" -}}
{{- $e := .Values.ledger.etcd -}}
{{- $l := dict "backend" "etcd" "endpoints" $e.endpoints "prefix" $e.prefix "request_timeout" $e.requestTimeout "lease_ttl" $e.leaseTTL -}}
{{- if $e.tlsSecret -}}
{{- $_ := set $l "tls" (dict "ca" "/etc/taglock/etcd/ca.crt" "cert" "/etc/taglock/etcd/tls.crt" "key" "/etc/taglock/etcd/tls.key") -}}
{{- end -}}
{{- if $e.username -}}
{{- $_ := set $l "username" $e.username -}}
{{- end -}}
{{- if $e.passwordSecret -}}
{{- $_ := set $l "password_file" "/etc/taglock/etcd-password/password" -}}
{{- end -}}
{{- $_ := set $cfg "ledger" $l -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy .Values.config)) -}}
{{- end -}}
