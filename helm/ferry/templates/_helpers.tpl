{{/*
Chart name, overridable with nameOverride; 63 characters at most (the DNS label limit).
*/}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: fullnameOverride, else the release name when it already contains the chart
name, else "<release>-<chart>".
*/}}
{{- define "ferry.fullname" -}}
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

{{/*
Chart label value: "<name>-<version>".
*/}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every resource carries.
*/}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the ferry pods; never change them on upgrade (a StatefulSet's or Deployment's selector is
immutable).
*/}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Container image reference: repository@digest when a digest pins it, else repository:tag with the tag defaulting to
the chart's appVersion.
*/}}
{{- define "ferry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
The pods' ServiceAccount: the one the chart creates (named after the release unless serviceAccount.name says
otherwise), else an existing one, else the namespace's `default`.
*/}}
{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
True ("true") when the release uses the etcd checkpoint store: a Deployment of `replicas` members. Otherwise the
file store: a StatefulSet of one member with a PersistentVolumeClaim.
*/}}
{{- define "ferry.etcd" -}}
{{- if eq (.Values.checkpoint.store | toString) "etcd" }}true{{ end }}
{{- end }}

{{/*
Checks values.schema.json also makes (it names the field; these messages say why), for installs that skip schema
validation, plus the ones a schema cannot express. Included once, at the top of statefulset.yaml, which helm renders
for both stores (it emits the StatefulSet only for the file store).
*/}}
{{- define "ferry.validate" -}}
{{- $c := .Values.checkpoint }}
{{- if not (has ($c.store | toString) (list "file" "etcd")) }}
{{- fail (printf "checkpoint.store: %v is not a checkpoint store: use file (one member) or etcd (several members)" $c.store) }}
{{- end }}
{{- if include "ferry.etcd" . }}
{{- $etcd := $c.etcd }}
{{- if not $etcd.endpoints }}
{{- fail "checkpoint.etcd.endpoints: at least one etcd endpoint is required with checkpoint.store: etcd (the chart does not ship etcd)" }}
{{- end }}
{{- if and $etcd.username (not $etcd.password.secretName) }}
{{- fail "checkpoint.etcd.password.secretName: required when checkpoint.etcd.username is set (the password comes from an existing Secret)" }}
{{- end }}
{{- if and $etcd.password.secretName (not $etcd.username) }}
{{- fail "checkpoint.etcd.username: required when checkpoint.etcd.password.secretName is set" }}
{{- end }}
{{- if and $etcd.tls.secretName (ne (empty $etcd.tls.cert) (empty $etcd.tls.key)) }}
{{- fail "checkpoint.etcd.tls: cert and key go together (a client certificate needs its key); set both or neither" }}
{{- end }}
{{- else if ne (int .Values.replicas) 1 }}
{{- fail (printf "replicas: %v members need checkpoint.store: etcd; the file store belongs to one process, so it runs exactly 1" .Values.replicas) }}
{{- end }}
{{- end }}

{{/*
Where the etcd TLS Secret is mounted.
*/}}
{{- define "ferry.etcdTlsDir" -}}
/etc/ferry/etcd-tls
{{- end }}

{{/*
The `checkpoint` section of the ferry config, rendered from values.checkpoint. Strings are JSON-quoted (valid YAML).
The etcd password is only ever a reference to the FERRY_ETCD_PASSWORD environment variable.
*/}}
{{- define "ferry.checkpointConfig" -}}
{{- $c := .Values.checkpoint -}}
# Rendered by the chart from values.checkpoint.
checkpoint:
  store: {{ $c.store }}
  interval: {{ $c.interval | toString | toJson }}
{{- if include "ferry.etcd" . }}
{{- $etcd := $c.etcd }}
  etcd:
    endpoints: {{ $etcd.endpoints | toJson }}
    prefix: {{ $etcd.prefix | toJson }}
    lease_ttl: {{ $etcd.leaseTtl | toString | toJson }}
    history_retention: {{ $etcd.historyRetention | toString | toJson }}
    {{- if $etcd.username }}
    username: {{ $etcd.username | toJson }}
    password: { env: FERRY_ETCD_PASSWORD }
    {{- end }}
    {{- with $etcd.tls }}
    {{- if .secretName }}
    tls:
      {{- if .ca }}
      ca_file: {{ printf "%s/%s" (include "ferry.etcdTlsDir" $) .ca | toJson }}
      {{- end }}
      {{- if .cert }}
      cert_file: {{ printf "%s/%s" (include "ferry.etcdTlsDir" $) .cert | toJson }}
      key_file: {{ printf "%s/%s" (include "ferry.etcdTlsDir" $) .key | toJson }}
      {{- end }}
    {{- end }}
    {{- end }}
{{- else }}
  path: {{ .Values.persistence.mountPath | toJson }}
{{- end }}
{{- end }}

{{/*
values.config as a map (a string is parsed), as JSON; fails naming `config` when the string is not YAML.
*/}}
{{- define "ferry.parsedConfig" -}}
{{- $config := required "values: config (the ferry YAML, see config-examples/full.yaml) is required" .Values.config }}
{{- $parsed := $config }}
{{- if kindIs "string" $config }}
{{- $parsed = fromYaml $config }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "config: not valid YAML: %s" (get $parsed "Error")) }}
{{- end }}
{{- end }}
{{- toJson $parsed }}
{{- end }}

{{/*
The pods' checksum/config annotation: what a running ferry cannot reload. ferry applies changed flows and throttles
from its mounted config file while it runs; any other change (clusters, the checkpoint section, discovery, metrics,
a section it does not know) needs a restart, so it changes the pod template and rolls the pods. With
restartOnConfigChange every change rolls them.
*/}}
{{- define "ferry.restartChecksum" -}}
{{- $parsed := include "ferry.parsedConfig" . | fromJson }}
{{- $restart := .Values.restartOnConfigChange | ternary $parsed (omit $parsed "flows" "throttles") }}
{{- dict "config" $restart "checkpoint" (include "ferry.checkpointConfig" .) | toJson | sha256sum }}
{{- end }}

{{/*
The ferry YAML: values.config (a string is copied verbatim, a map is rendered with toYaml) followed by the chart's
checkpoint section. values.config must not have its own checkpoint section: YAML forbids the duplicate key.
*/}}
{{- define "ferry.config" -}}
{{- $config := .Values.config }}
{{- $parsed := include "ferry.parsedConfig" . | fromJson }}
{{- if hasKey $parsed "checkpoint" }}
{{- fail "config: remove its `checkpoint` section: the chart renders it from the values checkpoint.store, checkpoint.interval and checkpoint.etcd" }}
{{- end }}
{{- if kindIs "string" $config }}
{{- $config | trimSuffix "\n" }}
{{- else }}
{{- toYaml $config | trimSuffix "\n" }}
{{- end }}
{{ include "ferry.checkpointConfig" . }}
{{- end }}
