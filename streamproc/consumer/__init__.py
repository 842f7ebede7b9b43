"""The priority consumer, as parts a chunk passes through in this order:

* :mod:`~streamproc.consumer.clients`: one Kafka consumer per lane in one group (injectable);
* :mod:`~streamproc.consumer.loop`: :class:`PriorityConsumer`, the loop that takes realtime
  first and gives lower lanes time-budgeted turns (:mod:`~streamproc.consumer.turns`);
* :mod:`~streamproc.consumer.pipeline`: decode, handle with retries, park what fails;
* :mod:`~streamproc.consumer.pausebook`: why each partition is paused (flow policy, backpressure);
* :mod:`~streamproc.consumer.rebalance`: assign, revoke and lost, per lane consumer.
"""

from streamproc.consumer.clients import ClientFactory, KafkaClients
from streamproc.consumer.loop import ConsumerStats, LaneStats, PriorityConsumer, StopConsumer
from streamproc.consumer.pipeline import Outcome

__all__ = [
    "ClientFactory",
    "ConsumerStats",
    "KafkaClients",
    "LaneStats",
    "Outcome",
    "PriorityConsumer",
    "StopConsumer",
]
