"""Config models of the gateway's sources (one block per PLC endpoint under ``sources:``).

A source either names a PLC of the plant's catalogue (``plc: line1-plc1``: endpoint and tags come
from the catalogue, nobody types a register twice) or, for a device TwinEdge did not make, gives the
endpoint and lists its tags by hand (see config/examples/third-party-modbus.yaml).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, model_validator

from gateway.common.configfile import StrictModel
from gateway.sources.modbus_codec import Datatype, WordOrder
from gateway.sources.modbus_planner import MAX_BITS, MAX_REGISTERS, Table


class _SourceCommon(StrictModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    interval_ms: int = Field(default=1000, ge=10, le=86_400_000)
    plc: str | None = None  # id of a PLC in the tag catalogue
    site: str = ""  # hierarchy of hand-listed tags (catalogue PLCs carry their own)
    area: str = ""
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)  # asyncua's cap, conventions §5.2


class ModbusTagConfig(StrictModel):
    asset: str = Field(min_length=1)
    key: str = Field(min_length=1)
    table: Table
    address: int = Field(ge=0, le=0xFFFF)  # 0-based PDU address: 40001 is holding_register 0
    datatype: Datatype
    count: int | None = Field(default=None, ge=1, le=125)  # registers of a string; implied otherwise
    word_order: WordOrder | None = None  # None: the source's word_order
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None  # UNECE code
    unit_id: int | None = Field(default=None, ge=0, le=255)  # None: the source's unit_id
    access: Literal["ro", "rw"] = "ro"


class ReadableBlock(StrictModel):
    """Addresses the device documents as readable as one block, so gaps inside may be bridged."""

    table: Table
    address: int = Field(ge=0, le=0xFFFF)
    count: int = Field(ge=1, le=MAX_BITS)
    unit_id: int | None = Field(default=None, ge=0, le=255)


class ModbusSourceConfig(_SourceCommon):
    protocol: Literal["modbus"] = "modbus"
    timeout_s: float = Field(default=3.0, gt=0, le=60)  # pymodbus default, conventions §2.7
    retries: int = Field(default=1, ge=0, le=10)
    host: str | None = None  # with plc: overrides the catalogue (e.g. a NAT or container address)
    port: int | None = Field(default=None, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    word_order: WordOrder = "ABCD"
    max_gap: int = Field(default=16, ge=0, le=MAX_BITS)
    max_registers_per_request: int = Field(default=MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_bits_per_request: int = Field(default=MAX_BITS, ge=1, le=MAX_BITS)
    readable_blocks: tuple[ReadableBlock, ...] = ()
    # TCP connections to the device; a poll spreads its requests over them (requests on one
    # connection are serial). Many devices accept a few; 1 is what every device accepts.
    connections: int = Field(default=1, ge=1, le=16)
    # Requests outstanding at once on each connection, paired with their answers by MBAP transaction
    # id (sources/modbus_pipeline.py). 1: one at a time, through pymodbus, which every device accepts.
    pipeline: int = Field(default=1, ge=1, le=256)
    tags: tuple[ModbusTagConfig, ...] = ()

    @model_validator(mode="after")
    def _plc_or_tags(self) -> Self:
        if self.plc is None and (self.host is None or not self.tags):
            raise ValueError("give either plc: <catalogue PLC id> or host: and tags:")
        if self.plc is not None and self.tags:
            raise ValueError("plc: and tags: are exclusive (a catalogue PLC brings its tags)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        seen: set[tuple[str, str]] = set()
        for tag in self.tags:
            if (tag.asset, tag.key) in seen:
                raise ValueError(f"duplicate tag {tag.asset}/{tag.key}")
            seen.add((tag.asset, tag.key))
            if tag.table in ("coil", "discrete_input") and tag.datatype != "bool":
                raise ValueError(f"tag {tag.asset}/{tag.key}: a {tag.table} holds only bool")
            if tag.datatype == "string" and tag.count is None:
                raise ValueError(f"tag {tag.asset}/{tag.key}: a string needs count (registers)")
        return self


class OpcUaTagConfig(StrictModel):
    """A hand-listed node: by browse path from Objects (preferred: survives server restarts)
    or by NodeId string such as ``ns=2;s=Line1.Temp`` for servers with stable ids."""

    asset: str = Field(min_length=1)
    key: str = Field(min_length=1)
    browse_path: tuple[str, ...] | None = None
    namespace_uri: str | None = None  # None: the source's namespace_uri
    node_id: str | None = None
    unit: str | None = None

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.browse_path is None) == (self.node_id is None):
            raise ValueError("give exactly one of browse_path and node_id")
        return self


class OpcUaTagGroup(StrictModel):
    """Tags sampled at their own interval: ``match`` is a shell pattern on ``<asset>/<tag>``
    (``conveyor-*/belt_speed``, ``crusher-01/*``); the first group that matches a tag wins."""

    match: str = Field(min_length=1)
    sampling_interval_ms: int = Field(ge=0, le=86_400_000)


class OpcUaSecurity(StrictModel):
    policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None  # client certificate (DER or PEM path)
    private_key: str | None = None
    server_certificate: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError("policy and mode must both be None or both be set")
        if self.policy != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError("a security policy needs certificate and private_key")
        return self


class OpcUaSourceConfig(_SourceCommon):
    protocol: Literal["opcua"] = "opcua"
    timeout_s: float = Field(default=4.0, gt=0, le=60)  # asyncua request timeout, conventions §5.2
    endpoint: str | None = Field(default=None, pattern=r"^opc\.tcp://")  # with plc: overrides
    namespace_uri: str | None = None  # default namespace of hand-listed browse paths
    # subscribe (default): monitored items report changes (ThingsBoard measured 3x less CPU than
    # polling, issue 6); poll: batched Reads every interval_ms, for servers with poor subscriptions.
    mode: Literal["subscribe", "poll"] = "subscribe"
    max_nodes_per_request: int = Field(default=1000, ge=1, le=100_000)
    # Subscription settings (mode: subscribe). None: interval_ms.
    sampling_interval_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    publishing_interval_ms: int | None = Field(default=None, ge=10, le=86_400_000)
    # Items per CreateMonitoredItems call (capped further by the server's MaxMonitoredItemsPerCall)
    # and per subscription: a few large subscriptions, each within what servers accept.
    max_items_per_call: int = Field(default=1000, ge=1, le=100_000)
    max_items_per_subscription: int = Field(default=10_000, ge=1, le=1_000_000)
    # The server sends a keep-alive after this long without data; a subscription silent for three
    # keep-alives (its lifetime, Part 4 §5.13.2: lifetime >= 3 x keep-alive) is stale: reconnect.
    keepalive_s: float = Field(default=5.0, gt=0, le=3600)
    # Readings received between two read() calls; when full the oldest are dropped and counted.
    queue_max: int = Field(default=100_000, ge=1, le=10_000_000)
    # Samples the server keeps per monitored item between two publishes. None: publishing / sampling
    # interval. Larger values let a transferred subscription deliver every change of a link outage
    # (up to this many per item), at the cost of PLC memory while the link is down.
    item_queue_size: int | None = Field(default=None, ge=1, le=10_000)
    # Sampling intervals per tag group (mode subscribe); tags in no group use sampling_interval_ms.
    tag_groups: tuple[OpcUaTagGroup, ...] = ()
    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = None
    password: SecretStr | None = None
    tags: tuple[OpcUaTagConfig, ...] = ()

    @model_validator(mode="after")
    def _plc_or_tags(self) -> Self:
        if self.plc is None and (self.endpoint is None or not self.tags):
            raise ValueError("give either plc: <catalogue PLC id> or endpoint: and tags:")
        if self.plc is not None and self.tags:
            raise ValueError("plc: and tags: are exclusive (a catalogue PLC brings its tags)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        for tag in self.tags:
            if tag.browse_path is not None and tag.namespace_uri is None and self.namespace_uri is None:
                raise ValueError(f"tag {tag.asset}/{tag.key}: browse_path needs a namespace_uri")
        if (self.password is None) != (self.username is None):
            raise ValueError("username and password go together")
        return self


SourceConfig = Annotated[ModbusSourceConfig | OpcUaSourceConfig, Field(discriminator="protocol")]
