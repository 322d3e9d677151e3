"""The MQTT publisher process: ``python -m gateway.sinks.mqtt_worker``, started by the MQTT sink.

It runs a :class:`LoopPublisher` on its own event loop and relays over its stdin and stdout
(:mod:`gateway.sinks.mqtt_frames`): records in, connection and acknowledgement events out. Paho's
PUBLISH and PUBACK handling was about a third of the gateway's CPU at 40,000 values/s; here it runs
on the other core.

It lives exactly as long as the sink's pipe: SIGINT and SIGTERM are ignored (a Ctrl-C or a service
manager's stop reaches the whole process group, and the gateway must drain first), and when stdin
ends without a close frame (the gateway died, even by SIGKILL) it exits at once without a DISCONNECT,
so the broker publishes the gateway's Will.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections import deque
from typing import BinaryIO

from gateway.sinks.mqtt_frames import CLOSE, HEADER, PUBLISH, Event, WorkerHello, event_line, parse_batch
from gateway.sinks.mqtt_publisher import LoopPublisher
from gateway.sinks.outbox_common import OutboxRecord

log = logging.getLogger(__name__)
_NO_LIMIT = 1 << 30  # the sink bounds what it hands over; the worker is bound only by the window


class Relay:
    """The worker's :class:`PublisherListener`: events to the sink, records from it to the publisher.

    Acknowledgements are summed and written once per loop iteration (paho reports a burst of PUBACKs
    one by one); every other event first writes the acknowledgements before it, so the sink sees them
    in order. The sink hands over up to a batch beyond the window; those wait here and go out as
    PUBACKs free slots, without a trip through the sink's loop.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.publisher: LoopPublisher | None = None
        self.generation = 0
        self._pending: deque[OutboxRecord] = deque()
        self._acked_upto = 0
        self._acked_sent = 0  # the prefix the sink was last told
        self._published = 0
        self._rejected = 0
        self._flush_scheduled = False

    # -- from the sink ----------------------------------------------------------------------------

    def records(self, generation: int, records: list[OutboxRecord]) -> None:
        if generation == self.generation:  # older ones were handed over before a resend: they come again
            self._pending.extend(records)
            self._pump()

    def _pump(self) -> None:
        publisher, pending = self.publisher, self._pending
        if publisher is None or not pending:
            return
        room = publisher.room(_NO_LIMIT)
        if room <= 0:
            return
        batch = [pending.popleft() for _ in range(min(room, len(pending)))]
        taken = publisher.publish(batch)
        pending.extendleft(reversed(batch[taken:]))

    # -- PublisherListener ------------------------------------------------------------------------

    def link_up(self, window: int) -> None:
        self._emit({"e": "up", "window": window})
        self._pump()

    def link_down(self, why: str) -> None:
        self._emit({"e": "down", "why": why})

    def acked(self, upto_id: int, published: int, rejected: int) -> None:
        self._acked_upto = upto_id
        self._published += published
        self._rejected += rejected
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)
        self._pump()

    def resend_after(self, record_id: int) -> None:
        self.generation += 1
        self._pending.clear()
        self._emit({"e": "resend", "after": record_id, "generation": self.generation})

    def closed(self) -> None:
        self._emit({"e": "closed"})

    # -- to the sink ------------------------------------------------------------------------------

    def _flush_acks(self) -> None:
        self._flush_scheduled = False
        # A status message's PUBACK reports the same prefix with nothing new: the sink needs no event.
        if self._published or self._rejected or self._acked_upto != self._acked_sent:
            self._write({"e": "acked", "upto": self._acked_upto, "published": self._published,
                         "rejected": self._rejected})
            self._acked_sent = self._acked_upto
            self._published = self._rejected = 0

    def _emit(self, event: Event) -> None:
        self._flush_acks()
        self._write(event)

    def _write(self, event: Event) -> None:
        self._out.write(event_line(event))
        self._out.flush()


async def _serve(hello: WorkerHello, reader: asyncio.StreamReader, relay: Relay) -> None:
    publisher = LoopPublisher(hello.config, hello.client_id, hello.status_topic, relay)
    relay.publisher = publisher
    await publisher.start()
    while True:
        try:
            kind, length = HEADER.unpack(await reader.readexactly(HEADER.size))
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            os._exit(0)  # the sink is gone without closing us: no DISCONNECT, so the Will is published
        if kind == PUBLISH:
            relay.records(*parse_batch(body))
        elif kind == CLOSE:
            await publisher.close()
            relay.closed()
            return
        else:
            raise ValueError(f"unknown frame type {kind!r}")


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    hello = WorkerHello.model_validate_json(await reader.readline())
    logging.basicConfig(level=hello.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s mqtt-worker %(name)s: %(message)s")
    await _serve(hello, reader, Relay(sys.stdout.buffer))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_main())


if __name__ == "__main__":
    main()
