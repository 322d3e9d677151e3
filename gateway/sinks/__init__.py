"""Output plugins: each forwards readings from its own durable outbox to one remote system."""

from gateway.sinks.base import Sink, SinkStats, outbox_path
from gateway.sinks.outbox import AsyncOutbox, Outbox, OutboxRecord

__all__ = ["AsyncOutbox", "Outbox", "OutboxRecord", "Sink", "SinkStats", "outbox_path"]
