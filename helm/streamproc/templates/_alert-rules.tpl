{{/*
The recording and alert rules of streamproc consumers, as the `groups:` list of a Prometheus rules
file. Thresholds, windows, severities and the runbook base URL come from
.Values.metrics.prometheusRule; the realtime lag threshold follows flow.pauseLag.

files/prometheus-rules.yaml is this list rendered with the chart's default values (the plain rules
file for Prometheus without the Operator): regenerate it with `scripts/alert-rules` after a change
here; a chart test fails while the two differ.

Series carry the target labels of the scrape (namespace and pod under Kubernetes service
discovery); the consumer group comes from streamproc_consumer_info, joined on the target.
Prometheus' own templates ({{ $labels.x }}) sit inside Go string literals, so Helm leaves them be.
*/}}
{{- define "streamproc.alertRules" -}}
{{- $rule := .Values.metrics.prometheusRule }}
{{- $a := $rule.alerts }}
{{- $join := "* on (job, instance) group_left (consumer_group) streamproc_consumer_info" }}
{{- $runbook := $rule.runbookBaseUrl }}
{{- $pauseLag := .Values.flow.pauseLag | default 1000 }}
{{- $lag := $a.realtimeLagHigh }}
{{- $lagThreshold := $lag.messages | default (mulf $pauseLag $lag.pauseLagMultiple) | int64 }}
{{- $slo := $a.realtimeLatencyBudgetBurn }}
{{- $le := toString $slo.objectiveSeconds | replace "." "\\\\." }}
- name: streamproc-recording
  rules:
    # The joins the dashboard, the alerts and ad-hoc queries repeat, per group.
    - record: streamproc:lag_messages:sum
      expr: |
        sum by (namespace, consumer_group, lane) (
          streamproc_lag_messages
          {{ $join }}
        )
    - record: streamproc:messages_handled:rate5m
      expr: |
        sum by (namespace, consumer_group, lane, outcome) (
          rate(streamproc_messages_handled_total[5m])
          {{ $join }}
        )
    - record: streamproc:lane_paused:max
      expr: |
        max by (namespace, consumer_group, lane) (
          streamproc_lane_paused
          {{ $join }}
        )
    {{- range $window := list "5m" "30m" "1h" "6h" }}
    # Share of realtime chunks handled later than the objective ({{ $slo.objectiveSeconds }} s) over {{ $window }}.
    - record: streamproc:realtime_latency_slo_errors:ratio_rate{{ $window }}
      expr: |
        1 - (
          sum by (namespace, consumer_group) (
            rate(streamproc_end_to_end_latency_seconds_bucket{lane="realtime", le=~"{{ $le }}(\\.0)?"}[{{ $window }}])
            {{ $join }}
          )
          /
          sum by (namespace, consumer_group) (
            rate(streamproc_end_to_end_latency_seconds_count{lane="realtime"}[{{ $window }}])
            {{ $join }}
          )
        )
    {{- end }}

- name: streamproc
  rules:
    - alert: StreamprocConsumersAbsent
      expr: |
        (
          max by (namespace, consumer_group) (
            last_over_time(streamproc:lag_messages:sum[{{ $a.consumersAbsent.lookback }}])
          ) > 0
        )
        and on (namespace, consumer_group)
        (
          (
            group by (namespace, consumer_group) (
              last_over_time(streamproc_consumer_info[{{ $a.consumersAbsent.lookback }}])
            )
            unless on (namespace, consumer_group)
            group by (namespace, consumer_group) (streamproc_consumer_info)
          )
          or
          group by (namespace, consumer_group) (
            (up == 0)
            * on (job, instance) group_left (consumer_group)
            group by (job, instance, consumer_group) (
              last_over_time(streamproc_consumer_info[{{ $a.consumersAbsent.lookback }}])
            )
          )
        )
      for: {{ $a.consumersAbsent.for }}
      labels:
        severity: {{ $a.consumersAbsent.severity }}
      annotations:
        summary: {{ printf "Consumers of %s are gone while it has lag" "{{ $labels.consumer_group }}" | quote }}
        description: {{ printf "Consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} had lag when last seen, and its consumers have stopped reporting (all of them absent, or a scraped consumer down) for %s. Nothing else alerts then: the other alerts need the consumers' own series." $a.consumersAbsent.for | quote }}
        runbook_url: {{ printf "%s#streamprocconsumersabsent" $runbook | quote }}

    - alert: StreamprocConsumerNotReady
      expr: |
        streamproc_ready
        {{ $join }}
        == 0
      for: {{ $a.consumerNotReady.for }}
      labels:
        severity: {{ $a.consumerNotReady.severity }}
      annotations:
        summary: {{ `"Consumer {{ $labels.pod }} of {{ $labels.consumer_group }} is not ready"` }}
        description: {{ printf "Consumer {{ $labels.instance }} ({{ $labels.pod }}) of group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} has had no partition assigned or no broker reachable for %s (its /readyz says which)." $a.consumerNotReady.for | quote }}
        runbook_url: {{ printf "%s#streamprocconsumernotready" $runbook | quote }}

    - alert: StreamprocRealtimeLagHigh
      expr: |
        streamproc:lag_messages:sum{lane="realtime"} > {{ $lagThreshold }}
      for: {{ $lag.for }}
      labels:
        severity: {{ $lag.severity }}
      annotations:
        summary: {{ `"Realtime lane of {{ $labels.consumer_group }} is {{ $value | humanize }} messages behind"` }}
        description: {{ printf "The realtime lag of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} has stayed above %d messages for %s: the consumers do not keep up with realtime traffic even with the bulk lane paused." $lagThreshold $lag.for | quote }}
        runbook_url: {{ printf "%s#streamprocrealtimelaghigh" $runbook | quote }}

    {{- range $burn := list (dict "speed" "fast" "long" "1h" "short" "5m" "factor" $slo.fastBurnFactor "for" $slo.fastFor "severity" $slo.fastSeverity) (dict "speed" "slow" "long" "6h" "short" "30m" "factor" $slo.slowBurnFactor "for" $slo.slowFor "severity" $slo.slowSeverity) }}

    - alert: StreamprocRealtimeLatencyBudgetBurn
      expr: |
        streamproc:realtime_latency_slo_errors:ratio_rate{{ $burn.long }} > {{ $burn.factor }} * (1 - {{ $slo.objectiveRatio }})
        and on (namespace, consumer_group)
        streamproc:realtime_latency_slo_errors:ratio_rate{{ $burn.short }} > {{ $burn.factor }} * (1 - {{ $slo.objectiveRatio }})
      for: {{ $burn.for }}
      labels:
        severity: {{ $burn.severity }}
        burn: {{ $burn.speed }}
      annotations:
        summary: {{ printf "Realtime latency of {{ $labels.consumer_group }} burns its error budget %vx too fast" $burn.factor | quote }}
        description: {{ printf "Of the realtime chunks of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }}, {{ $value | humanizePercentage }} took longer than %vs over the last %s (and the last %s): the objective allows %v%% late, so at this rate the month's budget is spent %vx too fast." $slo.objectiveSeconds $burn.long $burn.short (mulf (subf 1 $slo.objectiveRatio) 100) $burn.factor | quote }}
        runbook_url: {{ printf "%s#streamprocrealtimelatencybudgetburn" $runbook | quote }}
    {{- end }}

    - alert: StreamprocLaneStarved
      expr: |
        max by (namespace, consumer_group, lane) (
          rate(streamproc_lane_paused_seconds_total[{{ $a.laneStarved.window }}])
          {{ $join }}
        ) > {{ $a.laneStarved.pausedShare }}
      for: {{ $a.laneStarved.for }}
      labels:
        severity: {{ $a.laneStarved.severity }}
      annotations:
        summary: {{ printf "The {{ $labels.lane }} lane of {{ $labels.consumer_group }} was paused {{ $value | humanizePercentage }} of the last %s" $a.laneStarved.window | quote }}
        description: {{ printf "Flow control held the {{ $labels.lane }} lane of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} paused more than %v of the time over %s (a lane that flips between paused and running counts too): a higher lane rarely drains, so this lane starves." $a.laneStarved.pausedShare $a.laneStarved.window | quote }}
        runbook_url: {{ printf "%s#streamproclanestarved" $runbook | quote }}

    - alert: StreamprocDeadLettersIncreasing
      expr: |
        sum by (namespace, consumer_group, lane, reason) (
          rate(streamproc_dead_letters_total[5m])
          {{ $join }}
        ) > 0
      for: {{ $a.deadLettersIncreasing.for }}
      labels:
        severity: {{ $a.deadLettersIncreasing.severity }}
      annotations:
        summary: {{ `"{{ $labels.consumer_group }} keeps dead-lettering {{ $labels.lane }} messages ({{ $labels.reason }})"` }}
        description: {{ printf "Consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} has been parking {{ $labels.lane }} messages in the dead-letter topic for reason {{ $labels.reason }} for %s ({{ $value | humanize }} per second now)." $a.deadLettersIncreasing.for | quote }}
        runbook_url: {{ printf "%s#streamprocdeadlettersincreasing" $runbook | quote }}

    - alert: StreamprocCommitsFailing
      expr: |
        sum by (namespace, consumer_group) (
          rate(streamproc_commits_total{outcome="failed"}[5m])
          {{ $join }}
        )
        /
        sum by (namespace, consumer_group) (
          rate(streamproc_commits_total[5m])
          {{ $join }}
        ) > {{ $a.commitsFailing.failedShare }}
      for: {{ $a.commitsFailing.for }}
      labels:
        severity: {{ $a.commitsFailing.severity }}
      annotations:
        summary: {{ `"{{ $value | humanizePercentage }} of the offset commits of {{ $labels.consumer_group }} fail"` }}
        description: {{ printf "More than %v of the offset commits of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} have failed for %s. Handled messages are handled again after the next rebalance or restart." $a.commitsFailing.failedShare $a.commitsFailing.for | quote }}
        runbook_url: {{ printf "%s#streamproccommitsfailing" $runbook | quote }}

    - alert: StreamprocRebalanceStorm
      expr: |
        max by (namespace, consumer_group) (
          increase(streamproc_rebalances_total{kind=~"assign|lost"}[{{ $a.rebalanceStorm.window }}])
          {{ $join }}
        ) > {{ $a.rebalanceStorm.rebalances }}
      for: {{ $a.rebalanceStorm.for }}
      labels:
        severity: {{ $a.rebalanceStorm.severity }}
      annotations:
        summary: {{ printf "{{ $labels.consumer_group }} rebalanced {{ $value | humanize }} times in %s" $a.rebalanceStorm.window | quote }}
        description: {{ printf "A member of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} got partitions assigned (or lost them) more than %v times in %s: members keep joining and leaving, and every rebalance stalls handling." $a.rebalanceStorm.rebalances $a.rebalanceStorm.window | quote }}
        runbook_url: {{ printf "%s#streamprocrebalancestorm" $runbook | quote }}

    - alert: StreamprocPartitionsNeverFetched
      expr: |
        max by (namespace, consumer_group) (
          increase(streamproc_fetch_restarts_total[{{ $a.partitionsNeverFetched.window }}])
          {{ $join }}
        ) > {{ $a.partitionsNeverFetched.restarts }}
      for: {{ $a.partitionsNeverFetched.for }}
      labels:
        severity: {{ $a.partitionsNeverFetched.severity }}
      annotations:
        summary: {{ printf "{{ $labels.consumer_group }} assigned again {{ $value | humanize }} partitions never fetched in %s" $a.partitionsNeverFetched.window | quote }}
        description: {{ printf "A member of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} found more than %v of its assigned partitions never fetched within %s and assigned them again: the group coordinator keeps moving or failing its offset lookups. Each one stalled for stuck_fetch_s first." $a.partitionsNeverFetched.restarts $a.partitionsNeverFetched.window | quote }}
        runbook_url: {{ printf "%s#streamprocpartitionsneverfetched" $runbook | quote }}

    - alert: StreamprocNoProgress
      expr: |
        (streamproc:lag_messages:sum > 0)
        and on (namespace, consumer_group, lane)
        (sum by (namespace, consumer_group, lane) (streamproc:messages_handled:rate5m{outcome!="retried"}) == 0)
        unless on (namespace, consumer_group, lane)
        (streamproc:lane_paused:max == 1)
      for: {{ $a.noProgress.for }}
      labels:
        severity: {{ $a.noProgress.severity }}
      annotations:
        summary: {{ `"{{ $labels.consumer_group }} handles nothing of the {{ $labels.lane }} lane despite lag"` }}
        description: {{ printf "The {{ $labels.lane }} lane of consumer group {{ $labels.consumer_group }} in namespace {{ $labels.namespace }} has lag but no message was handled for %s, and flow control is not what holds it: the consumers are stuck." $a.noProgress.for | quote }}
        runbook_url: {{ printf "%s#streamprocnoprogress" $runbook | quote }}

    - alert: StreamprocOpenTransactionHoldsPartition
      expr: |
        max by (namespace, consumer_group, lane, topic, partition) (
          streamproc_lso_held_seconds
          * on (job, instance) group_left (consumer_group) streamproc_consumer_info
        ) > {{ $a.openTransactionHold.seconds }}
      for: {{ $a.openTransactionHold.for }}
      labels:
        severity: {{ $a.openTransactionHold.severity }}
      annotations:
        summary: {{ `"An open transaction has held {{ $labels.topic }}[{{ $labels.partition }}] for {{ $value | humanizeDuration }}"` }}
        description: {{ printf "The last stable offset of {{ $labels.topic }} partition {{ $labels.partition }} (lane {{ $labels.lane }}, consumer group {{ $labels.consumer_group }}, namespace {{ $labels.namespace }}) has not moved for over %v seconds while records wait past it: a producer's transaction stays open, and nothing written after it is delivered." $a.openTransactionHold.seconds | quote }}
        runbook_url: {{ printf "%s#streamprocopentransactionholdspartition" $runbook | quote }}
{{- end }}
