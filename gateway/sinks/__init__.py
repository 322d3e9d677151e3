"""Output plugins: each forwards readings from its own durable outbox to one remote system."""

from gateway.sinks.base import Sink, SinkStats, outbox_path
from gateway.sinks.outbox import AsyncOutbox, Outbox
from gateway.sinks.outbox_common import OutboxRecord
from gateway.sinks.outbox_log import LogOutbox

__all__ = ["AsyncOutbox", "LogOutbox", "Outbox", "OutboxRecord", "Sink", "SinkStats", "outbox_path"]
