"""OpcUaSource in mode subscribe: against a plain asyncua server and against the plant, in-process.

Every wait is on a condition with a deadline (``until``), never a fixed sleep.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from devices.plant import Plant
from gateway.catalogue import load_catalogue
from gateway.common.status import BAD_NO_COMMUNICATION, GOOD, UNCERTAIN_LAST_USABLE_VALUE
from gateway.poller import Poller
from gateway.readings import Reading
from gateway.sources import OpcUaSource, OpcUaSourceConfig
from gateway.sources.opcua import BAD_NODE_ID_UNKNOWN
from tests.fixtures.plant import small_plant_config
from tests.source_support import by_key, until
from tests.test_sources_opcua import (
    EXPECTED,
    VARIABLES,
    OpcUaTestServer,
    catalogue_for,
    server,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def config(**extra: Any) -> OpcUaSourceConfig:
    base = {"name": "plc1", "plc": "plc1", "mode": "subscribe", "interval_ms": 50, "timeout_s": 2.0,
            "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    return OpcUaSourceConfig.model_validate(base | extra)


class Collector:
    """Accumulates what successive read() calls return, as the Poller would hand it on."""

    def __init__(self, source: OpcUaSource) -> None:
        self.source = source
        self.readings: list[Reading] = []

    async def read(self) -> list[Reading]:
        got = await self.source.read()
        self.readings += got
        return got

    def where(self, tag: str) -> list[Reading]:
        return [r for r in self.readings if r.tag == tag]


def test_subscribe_is_the_default_mode() -> None:
    cfg = OpcUaSourceConfig.model_validate({"name": "x", "plc": "p"})
    assert cfg.mode == "subscribe"
    with pytest.raises(ValueError, match="extra"):
        OpcUaSourceConfig.model_validate({"name": "x", "plc": "p", "subscription": {}})


async def test_first_read_is_a_complete_image_then_only_changes(server: OpcUaTestServer) -> None:  # noqa: F811
    async with OpcUaSource(config(), catalogue_for(server.endpoint)) as source:
        got = by_key(await source.read())
        for key, value in EXPECTED.items():
            assert got[key].quality == GOOD, key
            assert got[key].value == pytest.approx(value), key
        assert got["ghost"].quality == BAD_NODE_ID_UNKNOWN  # unresolved: reported once, not silently missing
        # Nothing changed: report by exception means an empty read (several publishing intervals).
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            assert await source.read() == []
        # A change carries the server's SourceTimestamp and StatusCode, not the gateway's clock.
        stamp = datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)
        await server.nodes["temp"].write_value(ua.DataValue(
            ua.Variant(42.5, ua.VariantType.Float),
            StatusCode=ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue), SourceTimestamp=stamp))
        collector = Collector(source)

        async def changed() -> bool:
            await collector.read()
            return bool(collector.where("temp"))

        await until(changed, "the change of temp")
        (temp,) = collector.where("temp")
        assert (temp.value, temp.quality, temp.source_ts) == (42.5, UNCERTAIN_LAST_USABLE_VALUE, stamp)
        assert {r.tag for r in collector.readings} == {"temp"}
        assert source.dropped == 0


async def test_items_batched_into_calls_and_subscriptions(server: OpcUaTestServer) -> None:  # noqa: F811
    cfg = config(max_items_per_call=2, max_items_per_subscription=3)
    async with OpcUaSource(cfg, catalogue_for(server.endpoint)) as source:
        got = by_key(await source.read())
        assert {k for k, r in got.items() if r.quality == GOOD} == set(VARIABLES)
        feed = source._feed
        assert feed is not None
        assert feed.subscription_count == math.ceil(len(VARIABLES) / 3)


async def test_queue_is_bounded_and_counts_drops(server: OpcUaTestServer) -> None:  # noqa: F811
    async with OpcUaSource(config(queue_max=3), catalogue_for(server.endpoint)) as source:
        await source.read()
        for i in range(5):  # five variables change: five notifications for a queue of three
            await server.nodes["count"].write_value(100 + i, ua.VariantType.Int32)
            await server.nodes["level"].write_value(10 + i, ua.VariantType.Int16)

        async def dropped() -> bool:
            return source.dropped > 0

        await until(dropped, "a drop is counted")
        assert len(await source.read()) <= 3


async def test_stalled_subscription_reconnects(server: OpcUaTestServer) -> None:  # noqa: F811
    """The server stops publishing (here: the subscription is deleted under the source): after its
    lifetime the source reports BadNoCommunication, reconnects and subscribes again by itself."""
    cfg = config(keepalive_s=0.2, timeout_s=1.0)
    async with OpcUaSource(cfg, catalogue_for(server.endpoint)) as source:
        await source.read()
        feed, client = source._feed, source._client
        assert feed is not None
        assert client is not None
        (sid,) = feed.subscription_ids
        await client.uaclient.delete_subscriptions([sid])
        collector = Collector(source)

        async def noticed() -> bool:
            await collector.read()
            return any(r.quality == BAD_NO_COMMUNICATION for r in collector.readings)

        started = time.monotonic()
        await until(noticed, "the stalled subscription is noticed")
        assert time.monotonic() - started < 5.0
        await server.nodes["temp"].write_value(ua.Variant(77.0, ua.VariantType.Float))

        async def recovered() -> bool:
            await collector.read()
            return any(r.value == 77.0 and r.quality == GOOD for r in collector.where("temp"))

        await until(recovered, "a new subscription after the stall")
        assert source._feed is not None
        assert source._feed.subscription_ids != [sid]


async def test_tag_groups_sample_at_their_own_interval(server: OpcUaTestServer) -> None:  # noqa: F811
    groups = [{"match": "pump1/temp", "sampling_interval_ms": 500}, {"match": "pump1/*", "sampling_interval_ms": 20}]
    async with OpcUaSource(config(tag_groups=groups), catalogue_for(server.endpoint)) as source:
        await source.read()
        feed = source._feed
        assert feed is not None
        asked = {source.points[i].ref.tag: ms for i, ms in feed.sampling_ms.items()}
    assert asked["temp"] == 500  # the first matching group wins
    assert asked["count"] == 20
    assert {ms for tag, ms in asked.items() if tag not in ("temp", "count")} == {20}  # pump1/* covers the rest
    with pytest.raises(ValueError, match="match"):
        config(tag_groups=[{"sampling_interval_ms": 5}])


async def test_notifications_reach_the_pipeline_without_waiting_for_the_poll_tick(
    server: OpcUaTestServer,  # noqa: F811
) -> None:
    """A subscribed source tells the Poller when data arrived: a change is handed on at once even
    with a poll interval of a minute."""
    batches: list[list[Reading]] = []

    async def on_batch(readings: list[Reading]) -> None:
        batches.append(readings)

    source = OpcUaSource(config(interval_ms=60_000, publishing_interval_ms=50, sampling_interval_ms=50),
                         catalogue_for(server.endpoint))
    poller = Poller(on_batch)
    poller.add(source, 60.0)
    await poller.start()
    try:
        await until(lambda: _arrived(batches, "temp", 21.5), "the first image")
        await server.nodes["temp"].write_value(ua.Variant(33.0, ua.VariantType.Float))
        await until(lambda: _arrived(batches, "temp", 33.0), "the change, long before the next tick", deadline_s=5.0)
    finally:
        await poller.close()


async def _arrived(batches: list[list[Reading]], tag: str, value: float) -> bool:
    return any(r.tag == tag and r.value == pytest.approx(value) for batch in batches for r in batch)


async def test_lost_link_transfers_the_subscription_and_recovers_every_change(
    server: OpcUaTestServer,  # noqa: F811
) -> None:
    """The TCP link breaks but the server keeps running: the source reports BadNoCommunication,
    reconnects, takes its subscription over (TransferSubscriptions) and delivers every change made
    while it was away, in order, from the items' server-side queues."""
    async with OpcUaSource(config(item_queue_size=50), catalogue_for(server.endpoint)) as source:
        collector = Collector(source)
        await collector.read()
        feed, client = source._feed, source._client
        assert feed is not None
        assert client is not None
        sids = feed.subscription_ids
        protocol = client.uaclient.protocol
        assert protocol is not None
        assert protocol.transport is not None
        protocol.transport.abort()  # the network drops; the server keeps the session's subscriptions
        for i in range(1, 21):  # changed while the gateway is away
            await server.nodes["count"].write_value(i, ua.VariantType.Int32)

        async def all_arrived() -> bool:
            await collector.read()
            return [r.value for r in collector.where("count") if r.quality == GOOD][-20:] == list(range(1, 21))

        await until(all_arrived, "every change made during the outage arrives, in order")
        assert any(r.quality == BAD_NO_COMMUNICATION for r in collector.readings)  # the outage was reported
        assert source._feed is feed  # the same feed, moved to the new session
        assert feed.subscription_ids == sids
        assert source._client is not client
        assert feed.missed_messages == 0
        await server.nodes["count"].write_value(99, ua.VariantType.Int32)

        async def live_again() -> bool:
            await collector.read()
            return any(r.value == 99 for r in collector.where("count"))

        await until(live_again, "changes after the transfer arrive through the new session")


async def test_restart_with_new_node_ids_followed_within_10s(server: OpcUaTestServer) -> None:  # noqa: F811
    async with OpcUaSource(config(), catalogue_for(server.endpoint)) as source:
        await source.read()
        await server.stop()
        await server.start(variant=1, offset=100.0)
        started = time.monotonic()
        collector = Collector(source)

        async def follows() -> bool:
            await collector.read()
            return any(r.value == pytest.approx(121.5) and r.quality == GOOD for r in collector.where("temp"))

        await until(follows, "the renumbered server is followed", deadline_s=10.0)
        assert time.monotonic() - started < 10.0
        # ...and later changes arrive through the new subscription, on the new NodeIds.
        await server.nodes["count"].write_value(5, ua.VariantType.Int32)

        async def changes() -> bool:
            await collector.read()
            return any(r.value == 5 for r in collector.where("count"))

        await until(changes, "a change after the restart")


async def test_poll_mode_reads_every_tag_each_time(server: OpcUaTestServer) -> None:  # noqa: F811
    async with OpcUaSource(config(mode="poll"), catalogue_for(server.endpoint)) as source:
        for _ in range(2):
            assert set(by_key(await source.read())) == {*VARIABLES, "ghost"}


async def test_plant_values_and_scan_timestamps(tmp_path: Path) -> None:
    plant = Plant(small_plant_config(tmp_path / "plant"), announce=lambda _line: None)
    async with plant.serving():
        plc = plant.plcs[0].plc
        for _ in range(20):
            plc.scan()
        catalogue = load_catalogue(tmp_path / "plant" / "catalogue.json")
        cfg = OpcUaSourceConfig.model_validate(
            {"name": "plc-1-opcua", "plc": "plc-1", "interval_ms": 50, "reconnect_min_s": 0.05})
        async with OpcUaSource(cfg, catalogue) as source:
            first = await source.read()
            image = plc.image
            assert image is not None
            tags = {(r.asset, r.tag) for r in first}
            assert len(tags) == len(source.points) == len(first)
            speed = next(r for r in first if (r.asset, r.tag) == ("conveyor-01", "belt_speed"))
            assert speed.quality == GOOD
            assert speed.value == pytest.approx(image.lookup("conveyor-01", "belt_speed")[0], rel=1e-6)
            collector = Collector(source)
            for _ in range(10):
                plc.scan()
            image = plc.image
            assert image is not None

            async def latest_scan() -> bool:
                await collector.read()
                return any(r.source_ts == image.timestamp for r in collector.readings)

            await until(latest_scan, "changes stamped with the latest scan")
            assert all(r.quality == GOOD for r in collector.readings if r.tag == "belt_speed")
