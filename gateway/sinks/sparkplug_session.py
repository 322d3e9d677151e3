"""A Sparkplug B edge node's session as a pure state machine (conventions §3.1): what to publish next,
with which ``seq``, ``bdSeq`` and aliases. No I/O and no clock: the sink passes times in and publishes
the messages it gets back, in order.

- NBIRTH: ``seq`` 0, metrics ``bdSeq`` (Int64) and ``Node Control/Rebirth`` (false); then one DBIRTH
  per online device with every metric it ever reported (name, alias, datatype, latest value).
- DDATA: only the metrics whose value or quality changed (report by exception), by alias, without
  datatype. Historical samples (store and forward) are all sent, flagged ``is_historical``: they are
  the record of what happened, not the current state.
- Every message after NBIRTH takes ``seq`` prev + 1, wrapping 255 -> 0.
- A device whose record (one batch) carries a communication-loss code (BadNoCommunication, BadTimeout)
  on every sample has lost its PLC: one DDEATH (timestamp and ``seq`` only), then nothing for it while
  further records say the same. Its next record with any other quality brings it back with a DBIRTH.
  Births skip offline devices. A device first seen without communication is announced when it answers.
- A device seen for the first time, a new tag of a known device, or a tag whose value changed type
  (say Int64 to Double) makes the device's next message a DBIRTH before its DDATA: a host must know a
  metric's alias and datatype before DATA uses them. The DBIRTH carries the sample that caused it.
- Aliases are unique across the edge node and stable for the life of the process: 1 and 2 are the node
  metrics, devices' metrics count from 3. Commands (NCMD, DCMD) may address a metric by either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.common.status import BAD_NO_COMMUNICATION, BAD_TIMEOUT
from gateway.encoders.sparkplug_b import (
    BDSEQ,
    REBIRTH,
    DataType,
    Metric,
    MetricValue,
    datatype_of,
    decode_payload,
    encode_payload,
    quality_properties,
    topic,
)
from gateway.encoders.uns_json import Message
from gateway.sinks.sparkplug_records import Sample

BDSEQ_ALIAS = 1
REBIRTH_ALIAS = 2
_FIRST_DEVICE_ALIAS = 3
_SEQ_MODULO = 256  # seq and bdSeq both wrap 255 -> 0
# The datatype of a tag first seen without a value: most tags are numbers; a value of another type
# later re-births the device with the right one.
_NULL_DATATYPE = DataType.DOUBLE
# What sources put on every tag of a PLC they cannot reach (see Source.bad_readings). Compared without the
# low 16 bits, which are OPC UA info bits rather than part of the code.
_COMMUNICATION_LOST = frozenset({BAD_NO_COMMUNICATION, BAD_TIMEOUT})
_CODE_MASK = 0xFFFF0000


def next_bdseq(last: int | None) -> int:
    """The bdSeq of the next CONNECT: 0 for the very first, then +1 wrapping 255 -> 0."""
    return 0 if last is None else (last + 1) % _SEQ_MODULO


@dataclass(slots=True)
class _MetricState:
    alias: int
    datatype: DataType
    value: MetricValue | None
    status: int
    ts_ms: int


@dataclass(slots=True)
class _Device:
    metrics: dict[str, _MetricState] = field(default_factory=dict)
    born: bool = False  # a DBIRTH with every current metric went out in this node session
    online: bool = False  # announced by a DBIRTH and not dead since; a new device is not, until it answers
    announced: bool = False  # a DBIRTH went out at some time in this process: hosts know its metrics


def _communication_lost(samples: Sequence[Sample]) -> bool:
    return bool(samples) and all(s.status & _CODE_MASK in _COMMUNICATION_LOST for s in samples)


def _fits(datatype: DataType, value: MetricValue | None) -> bool:
    """Whether a value can be published under a metric's datatype (an int widens into a Double)."""
    if value is None:
        return True
    actual = datatype_of(value)
    return actual == datatype or (datatype == DataType.DOUBLE and actual == DataType.INT64)


class EdgeNodeSession:
    """Message builder for one edge node. ``bdseq`` is set by the owner before each CONNECT."""

    def __init__(self, group_id: str, edge_node_id: str) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.bdseq = 0
        self._seq = 0
        self._devices: dict[str, _Device] = {}
        self._next_alias = _FIRST_DEVICE_ALIAS

    def topic(self, message_type: str, device_id: str | None = None) -> str:
        return topic(self.group_id, message_type, self.edge_node_id, device_id)

    def death(self, now_ms: int) -> Message:
        """The NDEATH: only the ``bdSeq`` metric, no ``seq``. The Will of each CONNECT, and what the node
        publishes itself before a clean disconnect."""
        metric = Metric(now_ms, self.bdseq, DataType.INT64, name=BDSEQ)
        return Message(self.topic("NDEATH"), encode_payload(now_ms, [metric]))

    def births(self, now_ms: int) -> list[Message]:
        """NBIRTH (``seq`` 0) and a DBIRTH for every online device: after each CONNECT, and on Rebirth.

        Offline devices get neither a DBIRTH nor a DDEATH right after one. A DBIRTH announces the device
        online with its current values, which an unreachable PLC does not have; a DBIRTH + DDEATH pair
        would show hosts its last values as fresh for a moment (and historians would record them). The
        NBIRTH opens a new birth sequence whose devices are the ones DBIRTHed in it, so leaving an offline
        device out keeps it offline for the host; after a reconnect the NDEATH already marked it so."""
        self._seq = 0
        node_metrics = [
            Metric(now_ms, self.bdseq, DataType.INT64, name=BDSEQ, alias=BDSEQ_ALIAS),
            Metric(now_ms, False, DataType.BOOLEAN, name=REBIRTH, alias=REBIRTH_ALIAS),
        ]
        out = [Message(self.topic("NBIRTH"), encode_payload(now_ms, node_metrics, 0))]
        out += [self._dbirth(dev_id, dev, now_ms) for dev_id, dev in self._devices.items() if dev.online]
        return out

    def data(self, device_id: str, samples: Sequence[Sample], *, historical: bool, now_ms: int) -> list[Message]:
        """The messages for one outbox record of ``device_id``: a DDEATH if the record says its PLC is
        lost (nothing more while it stays lost); otherwise a DBIRTH first if the device needs one, then a
        DDATA with what changed (nothing at all when nothing did). Requires :meth:`births` to have been
        published in this MQTT session."""
        device = self._devices.setdefault(device_id, _Device())
        # The samples are taken in even when nothing is published: a later DBIRTH carries the latest of each.
        changed = self._take_in(device, samples, historical)
        if _communication_lost(samples):
            return self._ddeath(device_id, device, now_ms)
        out = []
        if not (device.online and device.born):
            device.online = True
            out.append(self._dbirth(device_id, device, now_ms))
            if not historical:
                return out  # the DBIRTH carries this record's values; DDATA would repeat them
        if changed:
            payload = encode_payload(now_ms, changed, self._next_seq(), with_datatypes=False)
            out.append(Message(self.topic("DDATA", device_id), payload))
        return out

    def _take_in(self, device: _Device, samples: Sequence[Sample], historical: bool) -> list[Metric]:
        """Update the device's metrics from a record; the DDATA metrics for it (report by exception, all of
        them when historical). A new tag, or a value of another type, unbirths the device."""
        changed: list[Metric] = []
        for sample in samples:
            value = sample.value
            state = device.metrics.get(sample.tag)
            if state is None or not _fits(state.datatype, value):
                datatype = datatype_of(value) if value is not None else _NULL_DATATYPE
                if state is None:
                    state = device.metrics[sample.tag] = _MetricState(self._alloc_alias(), datatype, None, 0, 0)
                else:
                    state.datatype = datatype
                device.born = False  # the DBIRTH carries this sample
                send = True
            else:
                if state.datatype == DataType.DOUBLE and isinstance(value, int):
                    value = float(value)
                send = historical or value != state.value or sample.status != state.status
            state.value, state.status, state.ts_ms = value, sample.status, sample.ts_ms
            if send:
                changed.append(
                    Metric(sample.ts_ms, value, state.datatype, alias=state.alias, is_historical=historical,
                           properties=quality_properties(sample.status))
                )
        return changed

    def _ddeath(self, device_id: str, device: _Device, now_ms: int) -> list[Message]:
        """The DDEATH of a device whose PLC is lost: once, and only for a device hosts know as online.
        Timestamp (publication time, also in a history replay: the spec's meaning) and ``seq`` only."""
        if not device.online:
            return []  # already dead, or never announced: the bad samples would only repeat
        device.online = False
        return [Message(self.topic("DDEATH", device_id), encode_payload(now_ms, [], self._next_seq()))]

    def is_rebirth_command(self, payload: bytes) -> bool:
        """Whether an NCMD asks for a Rebirth (by name or by the alias our NBIRTH gave it). ValueError
        when the payload is not Sparkplug B."""
        return any(
            (m.name == REBIRTH or m.alias == REBIRTH_ALIAS) and m.value is True for m in decode_payload(payload).metrics
        )

    def knows_device(self, device_id: str) -> bool:
        """Whether a DBIRTH of ``device_id`` went out in this process (a host may address it in a DCMD)."""
        device = self._devices.get(device_id)
        return device is not None and device.announced

    def device_tag(self, device_id: str, name: str | None, alias: int | None) -> str | None:
        """The tag a command metric of ``device_id`` means: by name, else by the alias its DBIRTH gave it
        (§3.1: a command uses one or the other). None when the device has no such metric."""
        device = self._devices.get(device_id)
        if device is None or not device.announced:
            return None
        if name is not None:
            return name if name in device.metrics else None
        if alias is None:
            return None
        return next((tag for tag, m in device.metrics.items() if m.alias == alias), None)

    def _dbirth(self, device_id: str, device: _Device, now_ms: int) -> Message:
        metrics = [
            Metric(m.ts_ms, m.value, m.datatype, name=tag, alias=m.alias, properties=quality_properties(m.status))
            for tag, m in device.metrics.items()
        ]
        device.born = device.announced = True
        return Message(self.topic("DBIRTH", device_id), encode_payload(now_ms, metrics, self._next_seq()))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MODULO
        return self._seq

    def _alloc_alias(self) -> int:
        alias, self._next_alias = self._next_alias, self._next_alias + 1
        return alias
