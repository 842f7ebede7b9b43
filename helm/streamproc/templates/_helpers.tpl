{{/*
Names, labels and the configuration shared by several templates.
*/}}

{{- define "streamproc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "streamproc.fullname" -}}
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

{{- define "streamproc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamproc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamproc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamproc.labels" -}}
helm.sh/chart: {{ include "streamproc.chart" . }}
{{ include "streamproc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamproc
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The consumer pods: selector labels plus the component. */}}
{{- define "streamproc.consumerSelectorLabels" -}}
{{ include "streamproc.selectorLabels" . }}
app.kubernetes.io/component: consumer
{{- end }}

{{- define "streamproc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamproc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamproc.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "streamproc.realtimeTopic" -}}
{{- printf "%s.realtime" .Values.kafka.topicPrefix }}
{{- end }}

{{- define "streamproc.bulkTopic" -}}
{{- printf "%s.bulk" .Values.kafka.topicPrefix }}
{{- end }}

{{/*
KEDA's lagThreshold for the realtime trigger: the value when set, else
max(flow.pauseLag, 2 x committed-lag floor), the floor being what one healthy replica always has
committed behind the log end: a batch being handled plus what it handles between two commits.
Twice the floor keeps steady traffic at half the target, below the HPA's 10 % tolerance band, so
it never adds a replica; pauseLag is the lag a replica itself calls "behind".
*/}}
{{- define "streamproc.kedaLagThreshold" -}}
{{- $keda := .Values.autoscaling.keda }}
{{- if not (kindIs "invalid" $keda.lagThreshold) }}
{{- int64 $keda.lagThreshold }}
{{- else }}
{{- $c := .Values.consumer }}
{{- $betweenCommits := ceil (divf (mulf $keda.ratePerReplica $c.autoCommitIntervalMs) 1000.0) | int64 }}
{{- $floor := add (int64 $c.maxBatchMessages) $betweenCommits }}
{{- max (int64 .Values.flow.pauseLag) (mul 2 $floor) }}
{{- end }}
{{- end }}

{{/* The Secrets the chart does not own but reads (SASL and TLS existingSecret), sorted. */}}
{{- define "streamproc.existingSecrets" -}}
{{- $names := list }}
{{- if and (include "streamproc.saslPassword" .) .Values.kafka.sasl.existingSecret }}
{{- $names = append $names .Values.kafka.sasl.existingSecret }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret (include "streamproc.tlsFiles" . | fromYaml) }}
{{- $names = append $names .Values.kafka.tls.existingSecret }}
{{- end }}
{{- $names | uniq | sortAlpha | join "," }}
{{- end }}

{{/* -- Credentials ---------------------------------------------------------------------- */}}

{{/* "true" when the SASL mechanism authenticates with a username and password. */}}
{{- define "streamproc.saslPassword" -}}
{{- if has .Values.kafka.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512") }}true{{ end }}
{{- end }}

{{/* "true" when TLS PEM text is given inline (and no TLS Secret is named). */}}
{{- define "streamproc.tlsInline" -}}
{{- $tls := .Values.kafka.tls }}
{{- if and (not $tls.existingSecret) (or $tls.caCert $tls.clientCert $tls.clientKey) }}true{{ end }}
{{- end }}

{{/* "true" when the chart renders its own Secret. */}}
{{- define "streamproc.createSecret" -}}
{{- if or (and (include "streamproc.saslPassword" .) (not .Values.kafka.sasl.existingSecret)) (include "streamproc.tlsInline" .) }}true{{ end }}
{{- end }}

{{- define "streamproc.saslSecretName" -}}
{{- default (include "streamproc.fullname" .) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{- define "streamproc.tlsSecretName" -}}
{{- default (include "streamproc.fullname" .) .Values.kafka.tls.existingSecret }}
{{- end }}

{{/*
The TLS files to mount, as a dict: file name in /etc/streamproc/tls -> key in the TLS Secret.
Inline PEM lands in the chart's Secret under fixed keys; an existing Secret uses tls.existingSecretKeys
(an empty key name means that file is not in the Secret).
*/}}
{{- define "streamproc.tlsFiles" -}}
{{- $tls := .Values.kafka.tls }}
{{- $files := dict }}
{{- if $tls.existingSecret }}
{{- if $tls.existingSecretKeys.caCert }}{{ $_ := set $files "ca.crt" $tls.existingSecretKeys.caCert }}{{ end }}
{{- if $tls.existingSecretKeys.clientCert }}{{ $_ := set $files "tls.crt" $tls.existingSecretKeys.clientCert }}{{ end }}
{{- if $tls.existingSecretKeys.clientKey }}{{ $_ := set $files "tls.key" $tls.existingSecretKeys.clientKey }}{{ end }}
{{- else }}
{{- if $tls.caCert }}{{ $_ := set $files "ca.crt" "ca.crt" }}{{ end }}
{{- if $tls.clientCert }}{{ $_ := set $files "tls.crt" "tls.crt" }}{{ end }}
{{- if $tls.clientKey }}{{ $_ := set $files "tls.key" "tls.key" }}{{ end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{- define "streamproc.tlsDir" -}}/etc/streamproc/tls{{- end }}

{{/* -- Environment ---------------------------------------------------------------------- */}}

{{/* Connection variables (non-secret), shared by the consumer and the topic Job. */}}
{{- define "streamproc.connectionEnv" -}}
{{- $kafka := .Values.kafka }}
{{- $env := dict
  "STREAMPROC_BOOTSTRAP_SERVERS" $kafka.bootstrapServers
  "STREAMPROC_TOPIC_PREFIX" $kafka.topicPrefix
  "STREAMPROC_SECURITY_PROTOCOL" $kafka.securityProtocol
}}
{{- with $kafka.clientId }}{{ $_ := set $env "STREAMPROC_CLIENT_ID" . }}{{ end }}
{{- with $kafka.schemaRegistryUrl }}{{ $_ := set $env "STREAMPROC_SCHEMA_REGISTRY_URL" . }}{{ end }}
{{- with $kafka.sasl.mechanism }}{{ $_ := set $env "STREAMPROC_SASL_MECHANISM" . }}{{ end }}
{{- $files := include "streamproc.tlsFiles" . | fromYaml }}
{{- $dir := include "streamproc.tlsDir" . }}
{{- if hasKey $files "ca.crt" }}{{ $_ := set $env "STREAMPROC_SSL_CA_LOCATION" (printf "%s/ca.crt" $dir) }}{{ end }}
{{- if hasKey $files "tls.crt" }}{{ $_ := set $env "STREAMPROC_SSL_CERTIFICATE_LOCATION" (printf "%s/tls.crt" $dir) }}{{ end }}
{{- if hasKey $files "tls.key" }}{{ $_ := set $env "STREAMPROC_SSL_KEY_LOCATION" (printf "%s/tls.key" $dir) }}{{ end }}
{{- with $kafka.librdkafkaExtra }}{{ $_ := set $env "STREAMPROC_LIBRDKAFKA_EXTRA" (toJson .) }}{{ end }}
{{- toYaml $env }}
{{- end }}

{{/*
Every non-secret STREAMPROC_* variable of the consumer, as a YAML map of strings (the ConfigMap's
data). Unset optional values (null) are left out so streamproc's own defaults apply.
*/}}
{{- define "streamproc.consumerEnv" -}}
{{- $env := include "streamproc.connectionEnv" . | fromYaml }}
{{- $c := .Values.consumer }}
{{- $f := .Values.flow }}
{{- $strings := dict
  "STREAMPROC_GROUP_ID" $c.groupId
  "STREAMPROC_SINK" $c.sink
  "STREAMPROC_SCOPE" $c.scope
  "STREAMPROC_ASSIGNOR" $c.assignor
  "STREAMPROC_GROUP_PROTOCOL" $c.groupProtocol
  "STREAMPROC_ORDERING" $c.ordering
  "STREAMPROC_AUTO_OFFSET_RESET" $c.autoOffsetReset
  "STREAMPROC_ISOLATION_LEVEL" $c.isolationLevel
  "STREAMPROC_LOG_LEVEL" $c.logLevel
  "STREAMPROC_LOG_FORMAT" $c.logFormat
  "STREAMPROC_METRICS_ENABLED" "true"
}}
{{- /* YAML numbers reach templates as float64: integers are converted so 1000000 does not become 1e+06. */}}
{{- $integers := dict
  "STREAMPROC_MAX_BATCH_MESSAGES" $c.maxBatchMessages
  "STREAMPROC_SESSION_TIMEOUT_MS" $c.sessionTimeoutMs
  "STREAMPROC_MAX_POLL_INTERVAL_MS" $c.maxPollIntervalMs
  "STREAMPROC_AUTO_COMMIT_INTERVAL_MS" $c.autoCommitIntervalMs
  "STREAMPROC_PREFETCH_KBYTES" $c.prefetchKbytes
  "STREAMPROC_FETCH_PARTITION_KBYTES" $c.fetchPartitionKbytes
  "STREAMPROC_GROUP_LAG_SLACK" $c.groupLagSlack
  "STREAMPROC_MAX_RETRIES" $c.maxRetries
  "STREAMPROC_CONCURRENCY" $c.concurrency
  "STREAMPROC_METRICS_PORT" .Values.metrics.port
  "STREAMPROC_PAUSE_LAG" $f.pauseLag
  "STREAMPROC_RESUME_LAG" $f.resumeLag
}}
{{- $floats := dict
  "STREAMPROC_POLL_TIMEOUT_S" $c.pollTimeoutS
  "STREAMPROC_WATERMARK_REFRESH_S" $c.watermarkRefreshS
  "STREAMPROC_GROUP_REFRESH_S" $c.groupRefreshS
  "STREAMPROC_RETRY_BACKOFF_S" $c.retryBackoffS
  "STREAMPROC_RETRY_BACKOFF_MAX_S" $c.retryBackoffMaxS
  "STREAMPROC_HEALTH_MAX_TICK_AGE_S" $c.healthMaxTickAgeS
  "STREAMPROC_DLQ_FLUSH_TIMEOUT_S" $c.dlqFlushTimeoutS
  "STREAMPROC_REVOKE_TIMEOUT_S" $c.revokeTimeoutS
  "STREAMPROC_DRAIN_TIMEOUT_S" $c.drainTimeoutS
  "STREAMPROC_CLOSE_TIMEOUT_S" $c.closeTimeoutS
  "STREAMPROC_TRANSACTION_HOLD_WARN_S" $c.transactionHoldWarnS
  "STREAMPROC_BULK_TURN_MS" $c.bulkTurnMs
  "STREAMPROC_GC_YOUNG_THRESHOLD" $c.gcYoungThreshold
  "STREAMPROC_GIL_SWITCH_INTERVAL_MS" $c.gilSwitchIntervalMs
  "STREAMPROC_SERIAL_CPU_SHARE" $c.serialCpuShare
  "STREAMPROC_STATISTICS_INTERVAL_S" $c.statisticsIntervalS
  "STREAMPROC_STUCK_FETCH_S" $c.stuckFetchS
  "STREAMPROC_PAUSE_DELAY_S" $f.pauseDelayS
  "STREAMPROC_MAX_PAUSE_S" $f.maxPauseS
  "STREAMPROC_STARVATION_SLICE_S" $f.starvationSliceS
  "STREAMPROC_MIN_BULK_SHARE" $f.minBulkShare
  "STREAMPROC_MIN_BULK_SHARE_WINDOW_S" $f.minBulkShareWindowS
}}
{{- with $c.handler }}{{ $_ := set $strings "STREAMPROC_HANDLER" . }}{{ end }}
{{- with $c.maxInFlight }}{{ $_ := set $strings "STREAMPROC_MAX_IN_FLIGHT" (toString .) }}{{ end }}
{{- if not (kindIs "invalid" $c.reservedWorkers) }}{{ $_ := set $strings "STREAMPROC_RESERVED_WORKERS" (toString $c.reservedWorkers) }}{{ end }}
{{- if $c.onError }}
{{- $actions := list }}
{{- range $reason, $action := $c.onError }}{{ $actions = append $actions (printf "%s=%s" $reason $action) }}{{ end }}
{{- $_ := set $strings "STREAMPROC_ON_ERROR" (join "," $actions) }}
{{- end }}
{{- range $name, $value := $strings }}{{ $_ := set $env $name $value }}{{ end }}
{{- range $name, $value := $integers }}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $env $name (toString (int64 $value)) }}{{ end }}
{{- end }}
{{- range $name, $value := $floats }}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $env $name (toString $value) }}{{ end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/*
Per-pod variables of the consumer, from the downward API: the pod name, the client.id with it
(kafka.clientIdPerPod) and the static membership's base instance id (each lane's consumer appends
-<lane>). They come before the Secret and extra env, and win over the ConfigMap's values.
*/}}
{{- define "streamproc.podEnv" -}}
{{- if or .Values.kafka.clientIdPerPod .Values.consumer.staticMembership.enabled }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if .Values.kafka.clientIdPerPod }}
- name: STREAMPROC_CLIENT_ID
  value: {{ printf "%s-$(POD_NAME)" (default "streamproc" .Values.kafka.clientId) | quote }}
{{- end }}
{{- if .Values.consumer.staticMembership.enabled }}
- name: STREAMPROC_GROUP_INSTANCE_ID
  value: "$(POD_NAME)"
{{- end }}
{{- end }}

{{/* Secret-backed variables (SASL username and password), as container env entries. */}}
{{- define "streamproc.secretEnv" -}}
{{- if include "streamproc.saslPassword" . }}
{{- $sasl := .Values.kafka.sasl }}
{{- $name := include "streamproc.saslSecretName" . }}
- name: STREAMPROC_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ ternary $sasl.existingSecretKeys.username "sasl-username" (ne $sasl.existingSecret "") }}
- name: STREAMPROC_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ ternary $sasl.existingSecretKeys.password "sasl-password" (ne $sasl.existingSecret "") }}
{{- end }}
{{- end }}

{{/* The TLS volume (empty when no TLS file is configured). */}}
{{- define "streamproc.tlsVolume" -}}
{{- $files := include "streamproc.tlsFiles" . | fromYaml }}
{{- if $files }}
- name: kafka-tls
  secret:
    secretName: {{ include "streamproc.tlsSecretName" . }}
    defaultMode: 0440
    items:
      {{- range $path, $key := $files }}
      - key: {{ $key }}
        path: {{ $path }}
      {{- end }}
{{- end }}
{{- end }}

{{- define "streamproc.tlsVolumeMount" -}}
{{- if include "streamproc.tlsFiles" . | fromYaml }}
- name: kafka-tls
  mountPath: {{ include "streamproc.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* -- Checks of combinations the schema cannot express -------------------------------- */}}
{{- define "streamproc.validate" -}}
{{- $v := .Values }}
{{- $kafka := $v.kafka }}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive: KEDA manages its own HorizontalPodAutoscaler. Enable only one of them." }}
{{- end }}
{{- if and (hasPrefix "SASL" $kafka.securityProtocol) (not $kafka.sasl.mechanism) }}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)." $kafka.securityProtocol) }}
{{- end }}
{{- if and $kafka.sasl.mechanism (not (hasPrefix "SASL" $kafka.securityProtocol)) }}
{{- fail (printf "kafka.sasl.mechanism is set but kafka.securityProtocol is %s: use SASL_SSL or SASL_PLAINTEXT." $kafka.securityProtocol) }}
{{- end }}
{{- if and (include "streamproc.saslPassword" .) (not $kafka.sasl.existingSecret) (not (and $kafka.sasl.username $kafka.sasl.password)) }}
{{- fail (printf "kafka.sasl.mechanism %s needs kafka.sasl.username and kafka.sasl.password, or kafka.sasl.existingSecret." $kafka.sasl.mechanism) }}
{{- end }}
{{- $files := include "streamproc.tlsFiles" . | fromYaml }}
{{- if and $files (not (has $kafka.securityProtocol (list "SSL" "SASL_SSL"))) }}
{{- fail (printf "TLS files are configured (kafka.tls) but kafka.securityProtocol is %s: use SSL or SASL_SSL." $kafka.securityProtocol) }}
{{- end }}
{{- if ne (hasKey $files "tls.crt") (hasKey $files "tls.key") }}
{{- fail "kafka.tls: a client certificate needs its key and the key its certificate (both or neither)." }}
{{- end }}
{{- if ge (int64 $v.flow.resumeLag) (int64 $v.flow.pauseLag) }}
{{- fail (printf "flow.resumeLag (%v) must be lower than flow.pauseLag (%v): without a gap the bulk lane would flap." $v.flow.resumeLag $v.flow.pauseLag) }}
{{- end }}
{{- if le (float64 $v.terminationGracePeriodSeconds) (addf $v.consumer.dlqFlushTimeoutS $v.consumer.closeTimeoutS 5.0) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed consumer.dlqFlushTimeoutS (%v) + consumer.closeTimeoutS (%v) by more than 5 s: shutdown finishes a batch, flushes dead letters, then commits and closes." $v.terminationGracePeriodSeconds $v.consumer.dlqFlushTimeoutS $v.consumer.closeTimeoutS) }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled $v.metrics.podMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled would scrape every pod twice: enable one of them." }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled (a ServiceMonitor selects a Service); or use metrics.podMonitor." }}
{{- end }}
{{- $keda := $v.autoscaling.keda }}
{{- if and $keda.enabled $keda.allowIdleConsumers $keda.limitToPartitionsWithLag }}
{{- fail "autoscaling.keda.allowIdleConsumers and autoscaling.keda.limitToPartitionsWithLag cannot both be true (KEDA refuses the trigger)." }}
{{- end }}
{{- if and $keda.enabled $keda.limitToPartitionsWithLag $keda.ensureEvenDistributionOfPartitions }}
{{- fail "autoscaling.keda.limitToPartitionsWithLag and autoscaling.keda.ensureEvenDistributionOfPartitions cannot both be true (KEDA refuses the trigger): set ensureEvenDistributionOfPartitions=false." }}
{{- end }}
{{- if and $keda.enabled (not (kindIs "invalid" $keda.idleReplicaCount)) (ge (int64 $keda.idleReplicaCount) (int64 $keda.minReplicaCount)) }}
{{- fail (printf "autoscaling.keda.idleReplicaCount (%v) must be lower than minReplicaCount (%v)." $keda.idleReplicaCount $keda.minReplicaCount) }}
{{- end }}
{{- if and $keda.enabled (gt (int64 $keda.minReplicaCount) (int64 $keda.maxReplicaCount)) }}
{{- fail (printf "autoscaling.keda.minReplicaCount (%v) must not exceed maxReplicaCount (%v)." $keda.minReplicaCount $keda.maxReplicaCount) }}
{{- end }}
{{- if and $keda.enabled (eq $kafka.sasl.mechanism "OAUTHBEARER") (not $keda.authenticationRef) }}
{{- fail "autoscaling.keda with kafka.sasl.mechanism OAUTHBEARER needs autoscaling.keda.authenticationRef: the name of a TriggerAuthentication you manage with the OAuth settings." }}
{{- end }}
{{- end }}
