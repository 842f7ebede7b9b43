"""KEDA's Kafka scaler and the HPA's replica arithmetic, replayed on offsets read from a broker.

A transcription of KEDA v2.20.2 ``pkg/scalers/kafka_scaler.go`` (``getLagForPartition``,
``getTotalLag``, ``getNextFactorThatBalancesConsumersToTopicPartitions``, activity in
``GetMetricsAndActivity``) and of how KEDA and the HPA turn its metric into replicas: every
trigger is an ``AverageValue`` external metric with target ``lagThreshold``; the HPA asks
``ceil(metric / target)`` for each and takes the largest, keeps the current count inside its 10 %
tolerance, and stays within [max(minReplicaCount, 1), maxReplicaCount]; KEDA scales to
``idleReplicaCount`` or ``minReplicaCount`` (when 0) only once no trigger has been active for
``cooldownPeriod`` (and not before ``initialCooldownPeriod`` after creation), and from zero to one
as soon as one is. The HPA's behaviour (rate limits over time) is left out: these are the counts
it moves towards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# KEDA (sarama) reads a partition without a committed offset as -1; confluent-kafka reports
# librdkafka's OFFSET_INVALID (-1001) for it.
NO_COMMITTED_OFFSETS = (-1, -1001)
HPA_TOLERANCE = 0.1


def _flag(metadata: Mapping[str, str], name: str) -> bool:
    return metadata.get(name, "false") == "true"


@dataclass
class KafkaTrigger:
    """One ``type: kafka`` trigger of a rendered ScaledObject, with the scaler's memory."""

    topic: str
    lag_threshold: int
    activation_lag_threshold: int
    offset_reset_policy: str
    allow_idle_consumers: bool
    exclude_persistent_lag: bool
    limit_to_partitions_with_lag: bool
    ensure_even_distribution: bool
    scale_to_zero_on_invalid_offset: bool
    previous_offsets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, trigger: Mapping[str, Any]) -> KafkaTrigger:
        metadata: Mapping[str, str] = trigger["metadata"]
        return cls(
            topic=metadata["topic"],
            lag_threshold=int(metadata.get("lagThreshold", "10")),
            activation_lag_threshold=int(metadata.get("activationLagThreshold", "0")),
            offset_reset_policy=metadata.get("offsetResetPolicy", "latest"),
            allow_idle_consumers=_flag(metadata, "allowIdleConsumers"),
            exclude_persistent_lag=_flag(metadata, "excludePersistentLag"),
            limit_to_partitions_with_lag=_flag(metadata, "limitToPartitionsWithLag"),
            ensure_even_distribution=_flag(metadata, "ensureEvenDistributionOfPartitions"),
            scale_to_zero_on_invalid_offset=_flag(metadata, "scaleToZeroOnInvalidOffset"),
        )

    def _partition_lag(self, partition: int, committed: int, latest: int) -> tuple[int, int]:
        """(lag, lag with persistent lag) of one partition: ``getLagForPartition``."""
        if committed in NO_COMMITTED_OFFSETS:
            if self.offset_reset_policy == "latest":
                lag = 0 if self.scale_to_zero_on_invalid_offset else 1
                return lag, lag
            if self.scale_to_zero_on_invalid_offset:
                return 0, 0
            return latest, latest
        if self.exclude_persistent_lag:
            previous = self.previous_offsets.get(partition)
            self.previous_offsets[partition] = committed
            if previous == committed:
                # The offset did not move since the last poll: left out of scaling.
                return 0, latest - committed
        return latest - committed, latest - committed

    def poll(self, committed: Mapping[int, int], latest: Mapping[int, int]) -> tuple[int, bool]:
        """One polling interval: (metric value, active), as ``GetMetricsAndActivity``."""
        total_lag = total_with_persistent = partitions_with_lag = 0
        for partition, log_end in latest.items():
            lag, with_persistent = self._partition_lag(partition, committed[partition], log_end)
            total_lag += lag
            total_with_persistent += with_persistent
            partitions_with_lag += lag > 0
        partitions = len(latest)
        threshold = self.lag_threshold
        if (
            not self.allow_idle_consumers
            or self.limit_to_partitions_with_lag
            or self.ensure_even_distribution
        ):
            upper_bound = partitions
            if self.ensure_even_distribution:
                total_lag = _next_balancing_factor(total_lag, partitions, threshold) * threshold
            if self.limit_to_partitions_with_lag:
                upper_bound = partitions_with_lag
            if total_lag // threshold > upper_bound:
                total_lag = upper_bound * threshold
        return total_lag, total_with_persistent > self.activation_lag_threshold


def _next_balancing_factor(total_lag: int, partitions: int, threshold: int) -> int:
    """The smallest divisor of the partition count whose replicas cover the lag."""
    for factor in (f for f in range(1, partitions + 1) if partitions % f == 0):
        if factor * threshold >= total_lag:
            return factor
    return partitions


@dataclass
class ScaledObjectModel:
    """A rendered ScaledObject: its triggers and replica bounds."""

    triggers: dict[str, KafkaTrigger]
    min_replicas: int
    max_replicas: int
    idle_replicas: int | None
    cooldown_s: float
    initial_cooldown_s: float
    created_at: float | None = None
    last_active_at: float | None = None

    @classmethod
    def from_manifest(cls, scaled_object: Mapping[str, Any]) -> ScaledObjectModel:
        spec = scaled_object["spec"]
        return cls(
            triggers={t["name"]: KafkaTrigger.from_manifest(t) for t in spec["triggers"]},
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            idle_replicas=spec.get("idleReplicaCount"),
            cooldown_s=float(spec.get("cooldownPeriod", 300)),
            initial_cooldown_s=float(spec.get("initialCooldownPeriod", 0)),
        )

    def replicas(
        self,
        current: int,
        offsets: Mapping[str, tuple[Mapping[int, int], Mapping[int, int]]],
        now: float,
    ) -> tuple[int, dict[str, tuple[int, bool]]]:
        """Replicas KEDA and the HPA move to from ``current``, and each trigger's (metric, active).

        ``offsets`` maps each trigger's topic to (committed, log end) per partition, as read
        from the broker at one polling interval; ``now`` is that poll's time in seconds (the
        first poll counts as the ScaledObject's creation).
        """
        if self.created_at is None:
            self.created_at = now
        readings = {
            name: trigger.poll(*offsets[trigger.topic]) for name, trigger in self.triggers.items()
        }
        if any(active for _, active in readings.values()):
            self.last_active_at = now
        elif (
            now - self.created_at >= self.initial_cooldown_s
            and (self.last_active_at is None or now - self.last_active_at >= self.cooldown_s)
            and (self.idle_replicas is not None or self.min_replicas == 0)
        ):
            # Inactive for cooldownPeriod: idleReplicaCount, else minReplicaCount 0.
            return (self.idle_replicas or 0), readings
        floor = max(self.min_replicas, 1)
        if current == 0:
            return floor, readings  # KEDA activates to one; the HPA takes over from there
        desired = 0
        for name, (metric, _) in readings.items():
            target = self.triggers[name].lag_threshold
            ratio = metric / (target * current)
            wanted = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(metric / target)
            desired = max(desired, wanted)
        return min(max(desired, floor), self.max_replicas), readings
