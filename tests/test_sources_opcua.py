"""OpcUaSource against a real asyncua server on a free loopback port (no fixed sleeps)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asyncua import Client, Server, ua

from gateway.catalogue import parse_catalogue
from gateway.common.status import BAD_NO_COMMUNICATION, GOOD
from gateway.sources import OpcUaSource, OpcUaSourceConfig, SourceError
from gateway.sources.opcua import BAD_NODE_ID_UNKNOWN
from tests.fixtures.servers import free_port
from tests.source_support import by_key, until

URI = "urn:twinedge:plant"
PATH = ("site1", "area1", "plc1")

# key -> (variant type, value); the test server makes one variable per entry under asset "pump1"
VARIABLES: dict[str, tuple[ua.VariantType, Any]] = {
    "temp": (ua.VariantType.Float, 21.5),
    "flow": (ua.VariantType.Double, 3.25),
    "count": (ua.VariantType.Int32, -7),
    "hours": (ua.VariantType.UInt32, 4_000_000_000),
    "level": (ua.VariantType.Int16, 12),
    "running": (ua.VariantType.Boolean, True),
    "name": (ua.VariantType.String, "P-101"),
    "label": (ua.VariantType.LocalizedText, ua.LocalizedText("hello")),
}
EXPECTED: dict[str, Any] = {
    k: (v.Text if isinstance(v, ua.LocalizedText) else v) for k, (_, v) in VARIABLES.items()
}


class OpcUaTestServer:
    """Restartable server; ``variant`` 1 registers an extra namespace first and creates nodes in
    reverse order, so namespace index and every NodeId differ from variant 0."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/"
        self._server: Server | None = None
        self.nodes: dict[str, Any] = {}
        self.calls: list[Any] = []

    async def start(self, variant: int = 0, offset: float = 0.0) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        if variant:
            await server.register_namespace("urn:someone:else")
        idx = await server.register_namespace(URI)
        parent = server.nodes.objects
        for name in PATH:
            parent = await parent.add_object(idx, name)
        if variant:
            await parent.add_object(idx, "decoy")  # shifts numeric ids further
        asset = await parent.add_object(idx, "pump1")
        keys = list(VARIABLES)
        for key in reversed(keys) if variant else keys:
            vtype, value = VARIABLES[key]
            if (
                isinstance(value, float | int)
                and not isinstance(value, bool)
                and vtype != ua.VariantType.UInt32
            ):
                value = type(value)(value + offset)
            node = await asset.add_variable(idx, key, value, varianttype=vtype)
            await node.set_writable()
            self.nodes[key] = node

        async def reset(parent: Any, *args: Any) -> list[ua.Variant]:
            self.calls.append([a.Value if isinstance(a, ua.Variant) else a for a in args])
            return [ua.Variant(True, ua.VariantType.Boolean)]

        await asset.add_method(idx, "reset", reset, [ua.VariantType.Int32], [ua.VariantType.Boolean])
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


@pytest.fixture
async def server() -> AsyncIterator[OpcUaTestServer]:
    srv = OpcUaTestServer(free_port())
    await srv.start()
    yield srv
    await srv.stop()


def catalogue_for(endpoint: str, ghost: bool = True) -> Any:
    """Every test variable, plus (``ghost``) a tag the server does not have."""
    tags = [
        {"key": key, "datatype": "float32", "access": "rw", "opcua": {"browse_path": [*PATH, "pump1", key]}}
        for key in VARIABLES
    ]
    if ghost:
        tags.append({"key": "ghost", "datatype": "float32", "opcua": {"browse_path": [*PATH, "pump1", "ghost"]}})
    doc = {
        "format": "twinedge-catalogue",
        "version": 1,
        "plant": "t",
        "plcs": [
            {
                "id": "plc1",
                "site": "site1",
                "area": "area1",
                "opcua": {"endpoint": endpoint, "namespace_uri": URI},
                "modbus": None,
                "assets": [{"id": "pump1", "type": "pump", "tags": tags, "commands": []}],
            }
        ],
    }
    return parse_catalogue(doc)


def config(**extra: Any) -> OpcUaSourceConfig:
    base = {"name": "plc1", "plc": "plc1", "timeout_s": 2.0, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    return OpcUaSourceConfig.model_validate(base | extra)


def values_are(source: OpcUaSource, expected: dict[str, Any]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        got = by_key(await source.read())
        return all(got[k].quality == GOOD and got[k].value == pytest.approx(v) for k, v in expected.items())

    return check


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_reads_every_type_in_one_batch(server: OpcUaTestServer, mode: str) -> None:
    async with OpcUaSource(config(mode=mode), catalogue_for(server.endpoint)) as source:
        got = by_key(await source.read())
    for key, value in EXPECTED.items():
        assert got[key].quality == GOOD, key
        assert got[key].value == pytest.approx(value), key
        assert got[key].source_ts.tzinfo is not None
    assert got["ghost"].quality == BAD_NODE_ID_UNKNOWN  # missing node: bad, the rest unaffected
    assert (got["temp"].site, got["temp"].area, got["temp"].asset) == ("site1", "area1", "pump1")


async def test_hand_listed_tags_by_browse_path_and_node_id(server: OpcUaTestServer) -> None:
    node_id = server.nodes["count"].nodeid.to_string()
    cfg = OpcUaSourceConfig(
        name="third-party",
        endpoint=server.endpoint,
        namespace_uri=URI,
        site="s",
        area="a",
        tags=[
            {"asset": "p", "key": "t", "browse_path": [*PATH, "pump1", "temp"], "unit": "CEL"},
            {"asset": "p", "key": "c", "node_id": node_id},
        ],  # type: ignore[arg-type]
        max_nodes_per_request=1,  # forces one Read per node: batching must still line up
    )
    async with OpcUaSource(cfg) as source:
        got = by_key(await source.read())
    assert (got["t"].value, got["t"].unit, got["c"].value) == (pytest.approx(21.5), "CEL", -7)


async def test_write_coerces_to_the_server_type_and_call(server: OpcUaTestServer) -> None:
    async with OpcUaSource(config(), catalogue_for(server.endpoint)) as source:
        await source.read()
        await source.write("pump1", "count", 5.0)  # Int32 on the server: a float 5.0 must become 5
        await source.write("pump1", "temp", 30)  # Float on the server
        await source.write("pump1", "running", False)
        got = by_key(await source.read())
        assert (got["count"].value, got["temp"].value, got["running"].value) == (5, 30.0, False)
        with pytest.raises(SourceError):
            await source.write("pump1", "count", 1.5)
        with pytest.raises(SourceError):
            await source.write("pump1", "nope", 1)
        assert await source.call("pump1", "reset", [ua.Variant(3, ua.VariantType.Int32)]) is True
        assert server.calls == [[3]]


async def test_server_down_at_first_then_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sources.base")
    srv = OpcUaTestServer(free_port())
    async with OpcUaSource(config(), catalogue_for(srv.endpoint)) as source:
        for _ in range(3):
            assert {r.quality for r in await source.read()} == {BAD_NO_COMMUNICATION}
        await srv.start()
        try:
            await until(values_are(source, {"temp": 21.5}), "source recovers by itself")
        finally:
            await srv.stop()
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_restart_with_renumbered_namespace_and_nodes(server: OpcUaTestServer, mode: str) -> None:
    async with OpcUaSource(config(mode=mode), catalogue_for(server.endpoint)) as source:
        await until(values_are(source, {"temp": 21.5, "count": -7}), "first read")
        old_ids = {k: n.nodeid for k, n in server.nodes.items()}
        await server.stop()

        async def all_bad() -> bool:
            return {r.quality for r in await source.read()} == {BAD_NO_COMMUNICATION}

        await until(all_bad, "bad quality while the server is down")
        assert not source.connected
        await server.start(variant=1, offset=100.0)
        assert all(server.nodes[k].nodeid != old_ids[k] for k in old_ids)  # the test really renumbers
        await until(values_are(source, {"temp": 121.5, "count": 93, "name": "P-101"}), "follow the restart")
        assert source.connected


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_connect_reads_the_namespace_array_once(
    server: OpcUaTestServer, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server-instance check and the browse-path resolution share one read of the namespace
    array per connection; after a restart with renumbered namespaces the new array is used."""
    reads: list[int] = []
    original = Client.get_namespace_array

    async def counted(self: Client) -> list[str]:
        reads.append(1)
        return await original(self)

    monkeypatch.setattr(Client, "get_namespace_array", counted)
    # No missing tag: its periodic retry would read the array again, on purpose.
    async with OpcUaSource(config(mode=mode), catalogue_for(server.endpoint, ghost=False)) as source:
        await until(values_are(source, {"temp": 21.5}), "first values")
        assert len(reads) == 1
        await server.stop()
        await server.start(variant=1, offset=1.0)  # "urn:someone:else" now takes index 2
        await until(values_are(source, {"temp": 22.5, "count": -6}), "values after the renumbered restart")
        assert len(reads) == 2
