"""OPC UA client setup and teardown: timeouts, session, security and credentials from a source's
configuration, and a disconnect that stays quiet when the peer is already gone."""

from __future__ import annotations

import asyncio
import contextlib

from asyncua.client.client import Client
from asyncua.crypto import uacrypto
from cryptography import x509

from gateway.sources.config import OpcUaSourceConfig

SESSION_TIMEOUT_MS = 600_000


async def new_client(endpoint: str, config: OpcUaSourceConfig) -> Client:
    """An unconnected client for ``endpoint`` with the source's timeouts, security and user."""
    # asyncua probes the server every watchdog interval and drops the link when a probe takes
    # longer than that interval (1 s by default): on a busy gateway that tore down healthy
    # subscriptions. A probe gets the same time as any other request instead.
    client = Client(endpoint, timeout=config.timeout_s, watchdog_intervall=config.timeout_s)
    # asyncua asks for one hour and warns when a server revises it; ten minutes is what common
    # servers (and ours) grant, and the session is kept alive by the watchdog anyway.
    client.session_timeout = SESSION_TIMEOUT_MS
    client.name = client.description = f"TwinEdge gateway ({config.name})"
    sec = config.security
    if sec.policy != "None":
        assert sec.certificate is not None  # checked by the config model
        # Servers compare the session's ApplicationUri with the certificate's URI and refuse a
        # mismatch (BadCertificateUriInvalid): take it from the certificate, not asyncua's default.
        uri = await certificate_application_uri(sec.certificate)
        if uri is not None:
            client.application_uri = uri
        parts = [sec.policy, sec.mode, sec.certificate, sec.private_key]
        if sec.server_certificate:
            parts.append(sec.server_certificate)
        await client.set_security_string(",".join(str(p) for p in parts))
    if config.username is not None and config.password is not None:
        client.set_user(config.username)
        client.set_password(config.password.get_secret_value())
    return client


async def certificate_application_uri(path: str) -> str | None:
    """The ApplicationUri of a certificate: the URI in its subjectAltName (Part 6 §6.2.2)."""
    certificate = await uacrypto.load_certificate(path)
    with contextlib.suppress(x509.ExtensionNotFound):
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        return uris[0] if uris else None
    return None


async def quiet_disconnect(client: Client, timeout_s: float, *, keep_subscriptions: bool = False) -> None:
    """Disconnect without raising or logging tracebacks: the peer is usually gone already.
    ``keep_subscriptions``: close the session with DeleteSubscriptions=false (Part 4 §5.6.4), so a
    later session can take them over with TransferSubscriptions."""
    if client.uaclient.state.value in ("disconnected",):
        # No network I/O without a socket, but it stops the client's supervisor, watchdog and
        # publish loop, which would otherwise retry (and log) every second forever.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close_session(), timeout_s)
        client.disconnect_socket()
        return
    if keep_subscriptions:
        # asyncua's disconnect() always deletes them; closing the session first makes it skip that.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.uaclient.close_session(False), timeout_s)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), timeout_s)
    client.disconnect_socket()
