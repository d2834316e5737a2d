{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "cstore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "cstore.fullname" -}}
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

{{- define "cstore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "cstore.labels" -}}
helm.sh/chart: {{ include "cstore.chart" . }}
{{ include "cstore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the worker pods (never change them on upgrade: selectors are immutable). */}}
{{- define "cstore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cstore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cstore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cstore.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cstore.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Values checked once, with messages that say what to fix. */}}
{{- define "cstore.validate" -}}
{{- if not .Values.worker.model }}
{{- fail "worker.model is required: the name of the model the workers learn" }}
{{- end }}
{{- if not (regexMatch "^[a-z][a-z0-9_]{0,47}$" .Values.cassandra.keyspace) }}
{{- fail (printf "cassandra.keyspace %q: use lower-case letters, digits and _ (start with a letter, at most 48)" .Values.cassandra.keyspace) }}
{{- end }}
{{- if not .Values.cassandra.contactPoints }}
{{- fail "cassandra.contactPoints needs at least one Cassandra address" }}
{{- end }}
{{- if and .Values.cassandra.tls.enabled (not .Values.cassandra.tls.existingSecret) }}
{{- fail "cassandra.tls.enabled needs cassandra.tls.existingSecret: the Secret holding the CA (and client pair)" }}
{{- end }}
{{- if not (has .Values.worker.logFormat (list "text" "json")) }}
{{- fail (printf "worker.logFormat must be text or json, got %q" .Values.worker.logFormat) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/* cstore.toml: connection settings only, never credentials (those come from the Secret). */}}
{{- define "cstore.toml" -}}
{{- $c := .Values.cassandra -}}
# cstore configuration rendered by the {{ .Chart.Name }} chart; see cstore/config.py for the keys.
contact_points = {{ $c.contactPoints | toJson }}
port = {{ $c.port | int }}
keyspace = {{ $c.keyspace | toJson }}
{{- with $c.localDc }}
local_dc = {{ . | toJson }}
{{- end }}
profile = {{ $c.profile | toJson }}
replication_factor = {{ $c.replicationFactor | int }}
connect_timeout_s = {{ $c.connectTimeoutSeconds }}
request_timeout_s = {{ $c.requestTimeoutSeconds }}
{{- if $c.tls.enabled }}
ssl_ca = {{ printf "%s/%s" $c.tls.mountPath $c.tls.caKey | toJson }}
{{- if $c.tls.clientAuth }}
ssl_cert = {{ printf "%s/%s" $c.tls.mountPath $c.tls.certKey | toJson }}
ssl_key = {{ printf "%s/%s" $c.tls.mountPath $c.tls.keyKey | toJson }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.extraConfig }}
{{ $k }} = {{ $v | toJson }}
{{- end }}
{{- with $c.replicationDcs }}

[replication_dcs]
{{- range $dc, $rf := . }}
{{ $dc | toJson }} = {{ $rf | int }}
{{- end }}
{{- end }}
{{- range $name, $spec := $c.profiles }}

[profiles.{{ $name | toJson }}]
{{- range $k, $v := $spec }}
{{ $k }} = {{ $v | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* The login of one role: its own auth values when they name a Secret, else cassandra.auth. */}}
{{- define "cstore.auth" -}}
{{- $own := index . 1 -}}
{{- toJson (ternary $own (index . 0).Values.cassandra.auth (and (kindIs "map" $own) (not (empty $own.existingSecret)))) -}}
{{- end }}

{{/* Environment shared by the worker, schema and Locust containers: (list . $auth $keys), where $auth
     is the role's login (cstore.auth) and $keys whether the encryption key ring is mounted. */}}
{{- define "cstore.env" -}}
{{- $auth := index . 1 }}{{ $keys := index . 2 }}{{ with index . 0 -}}
- name: CSTORE_CONFIG
  value: /etc/cstore/cstore.toml
- name: CSTORE_LOG_FORMAT
  value: {{ .Values.worker.logFormat | quote }}
- name: CSTORE_LOG_LEVEL
  value: {{ .Values.worker.logLevel | quote }}
{{- with $auth.existingSecret }}
- name: CSTORE_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.usernameKey }}
- name: CSTORE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $auth.passwordKey }}
{{- end }}
{{- if and $keys .Values.encryption.existingSecret }}
- name: CSTORE_ENCRYPTION_KEY_FILE
  value: {{ printf "%s/%s" .Values.encryption.mountPath .Values.encryption.key | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes: the config file, the TLS files, a writable /tmp. $cm is the ConfigMap's name. */}}
{{- define "cstore.volumes" -}}
{{- $cm := index . 1 }}{{ with index . 0 -}}
- name: config
  configMap:
    name: {{ $cm }}
- name: tmp
  emptyDir: {}
{{- if .Values.cassandra.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.cassandra.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.encryption.existingSecret }}
- name: encryption-keys
  secret:
    secretName: {{ .Values.encryption.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{- define "cstore.volumeMounts" -}}
- name: config
  mountPath: /etc/cstore/cstore.toml
  subPath: cstore.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.cassandra.tls.enabled }}
- name: tls
  mountPath: {{ .Values.cassandra.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.encryption.existingSecret }}
- name: encryption-keys
  mountPath: {{ .Values.encryption.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
