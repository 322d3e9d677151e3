"""Endpoint security, certificates, users and roles of the PLC's OPC UA server (real TCP, loopback)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua import uaerrors
from cryptography.x509.oid import ExtendedKeyUsageOID

from devices.opcua import INSTANCE_NAMESPACE_URI, OpcUaExposer, OpcUaServerConfig, OpcUaUser
from tests.test_opcua_server import AREA, DEADLINE_S, PLC_ID, SITE, free_port, make_configs, make_plc

CLIENT_URI = "urn:twinedge:test:client"
USERS = (
    OpcUaUser(name="olga", password="op-secret", role="operator"),
    OpcUaUser(name="victor", password="view-secret", role="viewer"),
)


@dataclass
class ClientCert:
    cert: Path
    key: Path


@pytest.fixture
async def client_cert(tmp_path: Path) -> ClientCert:
    cert = ClientCert(tmp_path / "client_cert.der", tmp_path / "client_key.pem")
    await setup_self_signed_certificate(
        cert.key,
        cert.cert,
        CLIENT_URI,
        socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "twinedge-test-client"},
    )
    return cert


async def serve(tmp_path: Path, **options: object) -> AsyncIterator[OpcUaExposer]:
    plc = make_plc()
    config = OpcUaServerConfig(port=free_port(), users=USERS, **options)  # type: ignore[arg-type]
    async with OpcUaExposer(plc, *make_configs(config, tmp_path / "data")) as exposer:
        plc.scan()
        yield exposer


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[OpcUaExposer]:
    async for exposer in serve(tmp_path, auto_accept=True):
        yield exposer


def make_client(url: str, user: str | None = None, password: str | None = None) -> Client:
    client = Client(url, timeout=DEADLINE_S)
    client.application_uri = CLIENT_URI
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


async def secure(client: Client, cert: ClientCert) -> Client:
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(cert.cert),
        str(cert.key),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    return client


async def setpoint(client: Client) -> tuple[ua.Node, int]:
    ns = await client.get_namespace_index(INSTANCE_NAMESPACE_URI)
    path = [f"{ns}:{SITE}", f"{ns}:{AREA}", f"{ns}:{PLC_ID}", f"{ns}:conveyor-01"]
    asset = await client.nodes.objects.get_child(path)
    return await asset.get_child(f"{ns}:speed_setpoint"), ns


READ = ua.AccessLevel.CurrentRead.mask
WRITE = ua.AccessLevel.CurrentWrite.mask


async def user_access(node: ua.Node) -> tuple[int, int]:
    """(UserAccessLevel, AccessLevel) of a node."""
    user = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
    level = await node.read_attribute(ua.AttributeIds.AccessLevel)
    return int(user.Value.Value), int(level.Value.Value)


async def test_certificate_generated_and_secure_endpoints(demo_server: OpcUaExposer, tmp_path: Path) -> None:
    own = tmp_path / "data" / "pki" / PLC_ID / "own"
    assert (own / "certs" / "server_cert.der").is_file()
    assert (own / "private" / "server_key.pem").stat().st_mode & 0o077 == 0
    for folder in ("trusted/certs", "trusted/crl", "issuer/certs", "rejected/certs"):
        assert (tmp_path / "data" / "pki" / PLC_ID / folder).is_dir()
    endpoints = await demo_server.server.get_endpoints()
    offered = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
    assert offered == {
        ("None", ua.MessageSecurityMode.None_),
        ("Basic256Sha256", ua.MessageSecurityMode.Sign),
        ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
    }


async def test_anonymous_reads_but_may_not_write_or_call(demo_server: OpcUaExposer) -> None:
    async with make_client(demo_server.endpoint_url) as client:
        node, ns = await setpoint(client)
        assert await node.read_value() == 1.5
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await node.write_value(ua.Variant(2.0, ua.VariantType.Float))
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await (await node.get_parent()).call_method(f"{ns}:stop")
    assert demo_server.publisher.scans == 1


async def test_viewer_may_not_write(demo_server: OpcUaExposer, client_cert: ClientCert) -> None:
    client = await secure(make_client(demo_server.endpoint_url, "victor", "view-secret"), client_cert)
    async with client:
        node, ns = await setpoint(client)
        with pytest.raises(uaerrors.BadUserAccessDenied):
            await node.write_value(ua.Variant(2.0, ua.VariantType.Float))
        # What an HMI greys inputs out by: the viewer's own access, not the node's.
        assert await user_access(node) == (READ, READ | WRITE)
        stop = await (await node.get_parent()).get_child(f"{ns}:stop")
        assert (await stop.read_attribute(ua.AttributeIds.UserExecutable)).Value.Value is False


async def test_operator_writes_over_an_encrypted_channel(
    demo_server: OpcUaExposer, client_cert: ClientCert, tmp_path: Path
) -> None:
    client = await secure(make_client(demo_server.endpoint_url, "olga", "op-secret"), client_cert)
    async with client:
        node, ns = await setpoint(client)
        await node.write_value(ua.Variant(2.0, ua.VariantType.Float))
        assert await user_access(node) == (READ | WRITE, READ | WRITE)
        stop = await (await node.get_parent()).get_child(f"{ns}:stop")
        assert (await stop.read_attribute(ua.AttributeIds.UserExecutable)).Value.Value is True
    # auto_accept (demo mode) stores the accepted client certificate in the trust list
    assert list((tmp_path / "data" / "pki" / PLC_ID / "trusted" / "certs").glob("*.der"))


async def test_wrong_password_is_refused(demo_server: OpcUaExposer, client_cert: ClientCert) -> None:
    client = await secure(make_client(demo_server.endpoint_url, "olga", "guess"), client_cert)
    with pytest.raises(uaerrors.BadUserAccessDenied):
        async with client:
            pass


async def test_untrusted_client_certificate_is_rejected_until_trusted(
    tmp_path: Path, client_cert: ClientCert
) -> None:
    async for exposer in serve(tmp_path, auto_accept=False):
        pki = tmp_path / "data" / "pki" / PLC_ID
        client = await secure(make_client(exposer.endpoint_url, "olga", "op-secret"), client_cert)
        with pytest.raises((uaerrors.UaError, asyncio.TimeoutError, ConnectionError)):
            async with client:
                pass
        rejected = list((pki / "rejected" / "certs").glob("*.der"))
        assert len(rejected) == 1
        shutil.move(rejected[0], pki / "trusted" / "certs" / rejected[0].name)  # what an admin does
        client = await secure(make_client(exposer.endpoint_url, "olga", "op-secret"), client_cert)
        async with client:
            node, _ = await setpoint(client)
            await node.write_value(ua.Variant(2.0, ua.VariantType.Float))


async def test_anonymous_can_be_turned_off(tmp_path: Path) -> None:
    async for exposer in serve(tmp_path, allow_anonymous=False, security_policies=("None",)):
        with pytest.raises(uaerrors.UaError):
            async with make_client(exposer.endpoint_url):
                pass
        async with make_client(exposer.endpoint_url, "victor", "view-secret") as client:
            node, _ = await setpoint(client)
            assert await node.read_value() == 1.5


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_gateway_source_reads_and_writes_over_an_encrypted_channel(
    demo_server: OpcUaExposer, client_cert: ClientCert, mode: str
) -> None:
    """The gateway's own request paths (pre-encoded Read, its publish loop) under SignAndEncrypt."""
    from gateway.sources.config import OpcUaSourceConfig
    from gateway.sources.opcua import OpcUaSource

    path = [SITE, AREA, PLC_ID, "conveyor-01"]
    config = OpcUaSourceConfig.model_validate({
        "name": "secure", "endpoint": demo_server.endpoint_url, "namespace_uri": INSTANCE_NAMESPACE_URI,
        "mode": mode, "timeout_s": DEADLINE_S, "username": "olga", "password": "op-secret",
        "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                     "certificate": str(client_cert.cert), "private_key": str(client_cert.key)},
        "tags": [{"asset": "c1", "key": key, "browse_path": [*path, key]} for key in ("speed_setpoint", "running")],
    })
    async with OpcUaSource(config) as source:
        first = {r.tag: r for r in await source.read()}
        assert {r.quality for r in first.values()} == {0}
        await source.write("c1", "speed_setpoint", 1.25)
        for _ in range(50):
            demo_server._plc.scan()  # the PLC applies a client's write at its next scan
            got = {r.tag: r for r in await source.read()}
            if got.get("speed_setpoint") is not None and got["speed_setpoint"].value == pytest.approx(1.25):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the write was never read back")
