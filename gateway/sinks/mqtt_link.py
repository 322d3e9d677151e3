"""Drives a paho-mqtt client from the asyncio event loop, so no paho network thread exists.

Why: at tens of thousands of values/s, paho's thread, one ``call_soon_threadsafe`` hop per PUBACK and
the GIL hand-offs between the two threads cost about a quarter of the gateway's CPU. With paho's
external-loop API the loop's selector watches the socket instead: readable -> ``loop_read``, writable
-> ``loop_write`` (watched only while paho has bytes queued, via ``on_socket_register_write`` /
``on_socket_unregister_write``), and a timer calls ``loop_misc`` for keep-alive. Every paho callback
(``on_connect``, ``on_publish`` ...) therefore runs on the loop thread.

The one blocking step is opening a connection: paho 2.2's ``reconnect()`` does a blocking TCP connect
(up to ``connect_timeout``, 5 s) and, for mqtts, the TLS handshake, and it has no non-blocking
variant. It runs on a worker thread, where it only queues CONNECT; the socket is registered with the
loop once the thread is done, so the loop and the thread never use the client at the same time.

The settings every MQTT sink shares (broker URL, protocol, TLS, keep-alive) and building a paho client
from them live here too, so the UNS JSON and Sparkplug B sinks connect the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from paho.mqtt.client import CleanStartOption, SocketLike

# §5.2: paho defaults to 1 s -> 120 s; the gateway caps at 30 s so recovery after an outage is
# noticed within half a minute.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
# How often paho's keep-alive timer runs. A quarter of the keep-alive at most: the broker drops a
# client silent for 1.5 keep-alives, and the PINGREQ goes out up to one interval late.
MISC_INTERVAL_S = 1.0


class MqttTlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class MqttConnectionConfig(BaseModel):
    """The broker connection keys shared by the MQTT sinks. Unknown keys are errors (habit 2)."""

    model_config = ConfigDict(extra="forbid")

    url: str = "mqtt://127.0.0.1:1883"  # mqtt:// or mqtts://, optional user:pass@
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str | None = None
    tls: MqttTlsConfig | None = None
    # §3.3: Mosquitto >= 2.0.12 needs a non-zero keep-alive.
    keepalive_s: int = Field(default=30, ge=1, le=65535)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("url must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("url has no host")
        _ = parts.port  # raises ValueError on a malformed port
        return v


class BufferedReadClient(mqtt.Client):
    """A paho client that takes what the socket holds in one ``recv`` and serves paho's reads from it.

    Paho reads a packet in pieces: the command byte, each byte of the remaining length, then the rest,
    each a ``recv`` system call: three for a 4-byte PUBACK, a fifth of a publisher's CPU at thousands of
    PUBACKs a second. Overrides paho's private ``_sock_recv``, which the ``paho-mqtt~=2.2.0`` pin holds
    still. Paho reads until the socket is empty, so nothing stays buffered after ``loop_read`` except
    when it stopped at its packet limit: :attr:`buffered` tells, and the owner reads again.
    """

    _CHUNK = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buf = b""
        self._read_pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received from the socket that paho has not read yet."""
        return len(self._read_buf) - self._read_pos

    def reconnect(self) -> MQTTErrorCode:
        self._read_buf, self._read_pos = b"", 0  # bytes of the old connection mean nothing on the new one
        return super().reconnect()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_pos >= len(self._read_buf):
            data = super()._sock_recv(self._CHUNK)  # raises BlockingIOError when empty, as paho expects
            if len(data) <= bufsize:
                return data  # b"" (the broker closed) passes through too
            self._read_buf, self._read_pos = data, 0
        start = self._read_pos
        self._read_pos = end = min(start + bufsize, len(self._read_buf))
        return self._read_buf[start:end]


def make_client(
    config: MqttConnectionConfig, client_id: str, *, clean_start: CleanStartOption, paho_inflight: int = 20
) -> BufferedReadClient:
    """A paho client for ``config``, not connected. Blocking (``tls_set`` reads certificate files): call
    it off the loop. ``clean_start`` is paho's MQTT 5 option (``MQTT_CLEAN_START_FIRST_ONLY`` or a bool);
    MQTT 3.1.1 always gets a clean session. ``paho_inflight`` is paho's own QoS 1/2 window (20 is its
    default; 0 = none, for an owner that keeps the window itself); paho fixes it before connecting."""
    protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
    # reconnect_on_failure=False: MqttLink owns reconnects. Left on, paho would also reconnect inline,
    # with a blocking connect on the event loop, when a broker refuses the protocol version.
    client = BufferedReadClient(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol, reconnect_on_failure=False
    )
    parts = urlsplit(config.url)
    if parts.username is not None:
        password = unquote(parts.password) if parts.password is not None else None
        client.username_pw_set(unquote(parts.username), password)
    if parts.scheme == "mqtts":
        tls = config.tls or MqttTlsConfig()
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    client.max_inflight_messages_set(paho_inflight)  # refused once a connection is under way
    # Only records the endpoint for MqttLink's reconnect(); no I/O.
    client.connect_async(parts.hostname or "127.0.0.1", port, keepalive=config.keepalive_s, clean_start=clean_start)
    return client


class MqttLink:
    """Owns the connection of one paho client: (re)connects with exponential backoff, feeds socket
    events to paho on the loop, runs its keep-alive timer, and disconnects cleanly on ``close``.

    Paho's own reconnect logic (``loop_forever``) is not used: after a failed attempt or a lost link
    the next attempt waits ``retry_min_s``, doubling up to ``retry_max_s``; a successful CONNACK
    (reported by the owner through :meth:`reset_backoff`) starts the schedule over.
    """

    def __init__(
        self,
        client: BufferedReadClient,
        *,
        misc_interval_s: float,
        retry_min_s: float,
        retry_max_s: float,
        on_connect_error: Callable[[OSError], None],
        before_connect: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._misc_interval_s = misc_interval_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._on_connect_error = on_connect_error
        # Runs on the loop before each attempt, while no thread uses the client: the place to change what the
        # next CONNECT carries (Sparkplug's Will holds a bdSeq that grows with every CONNECT).
        self._before_connect = before_connect
        self._retry_delay_s: float | None = None
        # The socket's fd while it is registered with the loop. paho calls the socket callbacks on the
        # worker thread too (inside reconnect(), before the socket is ours): None makes them no-ops there.
        self._fd: int | None = None
        self._link_closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name="mqtt-link")

    def reset_backoff(self) -> None:
        """The broker accepted the connection: the next loss is retried after ``retry_min_s`` again."""
        self._retry_delay_s = None

    async def close(self) -> None:
        """Stop reconnecting and disconnect. Packets already queued (e.g. a last PUBLISH) are written
        before the DISCONNECT; nothing is left registered with the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        client = self._client
        client.disconnect()
        if self._fd is not None:
            # Write now instead of waiting for the selector: a few packets fit the socket buffer at once,
            # and paho closes the socket (on_socket_close) once DISCONNECT is out.
            client.loop_write()
        sock = client.socket()
        if self._fd is not None and sock is not None:
            # The broker stopped reading (send buffer full): do not wait for it; the Will covers us.
            self._detach()
            sock.close()

    # -- connection management --------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            try:
                await self._open()
            except OSError as exc:  # refused, unreachable, timed out, DNS, TLS (ssl.SSLError is an OSError)
                self._on_connect_error(exc)
            else:
                await self._serve()
            await asyncio.sleep(self._next_retry_delay())

    def _next_retry_delay(self) -> float:
        prev = self._retry_delay_s
        self._retry_delay_s = self._retry_min_s if prev is None else min(2 * prev, self._retry_max_s)
        return self._retry_delay_s

    async def _open(self) -> None:
        if self._before_connect is not None:
            self._before_connect()
        attempt = asyncio.ensure_future(asyncio.to_thread(self._client.reconnect))
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # close() cannot interrupt the thread. Wait for it and adopt the socket it may have opened,
            # so that close() shuts it instead of leaking it; how the attempt ended no longer matters.
            with contextlib.suppress(Exception):
                await attempt
            self._attach()
            raise
        self._attach()

    def _attach(self) -> None:
        client = self._client
        sock = client.socket()
        if sock is None:
            return
        self._fd = fd = sock.fileno()
        self._link_closed.clear()
        self._loop.add_reader(fd, self._read)
        if client.want_write():  # CONNECT, queued on the worker thread where the write callback was a no-op
            self._loop.add_writer(fd, client.loop_write)

    async def _serve(self) -> None:
        """Run paho's timers until the link closes: PINGREQ when idle, and dropping a link whose broker
        stopped answering or never sent CONNACK (paho decides both in ``loop_misc``)."""
        while not self._link_closed.is_set():
            try:
                async with asyncio.timeout(self._misc_interval_s):
                    await self._link_closed.wait()
            except TimeoutError:
                self._client.loop_misc()

    # -- socket events ----------------------------------------------------------------------------

    def _read(self) -> None:
        client = self._client
        client.loop_read()
        # Bytes already taken from the fd (our read buffer; TLS: decrypted into the SSL object) do not
        # make it readable again, so they would wait for the next packet; paho's own loop checks
        # pending() the same way.
        sock = client.socket()
        while sock is not None and (client.buffered > 0 or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)):
            client.loop_read()
            sock = client.socket()

    def _detach(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
            self._link_closed.set()

    # -- paho socket callbacks --------------------------------------------------------------------

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._detach()  # called just before paho closes the fd, which must leave the selector first

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        if self._fd is not None:
            self._loop.add_writer(self._fd, client.loop_write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        if self._fd is not None:
            self._loop.remove_writer(self._fd)
