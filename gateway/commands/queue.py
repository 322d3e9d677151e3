"""The command queue: accept, persist, execute in order per asset, resolve every command.

Life of a command: ``PENDING`` (stored, in its asset's queue) -> ``IN_PROGRESS`` (the runtime's
``execute`` callback writes through the source and awaits the read-back) -> ``COMPLETED``, or
``FAILED`` with the reason (PLC error, timeout, read-back mismatch). A pending command may be
``CANCELLED``; one still pending when its TTL ends is ``EXPIRED`` and never executed (conventions
§6.3: never execute stale commands).

Ordering: one worker per serial key (the asset by default; pass ``serial_key`` to serialise per PLC)
runs its commands one at a time in submission order; different keys run concurrently.

Restart: a command found ``IN_PROGRESS`` at :meth:`CommandQueue.start` was interrupted mid-write,
and whether the PLC applied it is unknown. It is marked ``FAILED`` with reason "gateway restarted
during execution" rather than retried, because replaying a write the operator may already have
seen fail is the more dangerous choice; the client re-submits if still wanted. ``PENDING`` commands
are resumed in order (those past their TTL expire).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta

from pydantic import Field
from sqlalchemy import Connection

from gateway.commands import store
from gateway.commands.store import CommandRecord, CommandRequest, CommandState
from gateway.common.configfile import StrictModel
from gateway.storage.audit import SYSTEM, Actor, AuditLog
from gateway.storage.db import Database

log = logging.getLogger(__name__)

Execute = Callable[[CommandRecord], Awaitable[None]]
Validate = Callable[[CommandRequest], Awaitable[None] | None]
Listener = Callable[[CommandRecord], None]

RESTARTED = "gateway restarted during execution"
STOPPED = "gateway stopped during execution"


class CommandQueueConfig(StrictModel):
    """``commands:`` in gateway.yaml."""

    default_ttl_s: float = Field(default=60.0, gt=0)
    max_ttl_s: float = Field(default=3600.0, gt=0)
    execute_timeout_s: float = Field(default=10.0, gt=0, description="write plus read-back, per command")
    require_idempotency_key: bool = False
    max_pending_per_asset: int = Field(default=100, ge=1, description="OWASP API6: command-rate cap")
    sweep_interval_s: float = Field(default=1.0, gt=0, description="how often pending commands are expired")


class CommandRejected(Exception):
    """The request is invalid for the target (unknown asset or tag, read-only, out of range, wrong
    type). Raised by the validator; ``status`` is the HTTP status the API answers with."""

    def __init__(self, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class CommandConflict(Exception):
    """The command is not in a state that allows this (e.g. cancelling a command already running)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CommandQueue:
    def __init__(
        self, db: Database, execute: Execute, validate: Validate | None = None,
        config: CommandQueueConfig | None = None, *, serial_key: Callable[[str], str] = lambda asset: asset,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.execute = execute
        self.validate = validate
        self.config = config or CommandQueueConfig()
        self.serial_key = serial_key
        self.clock = clock
        self._queues: dict[str, deque[int]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._running: set[int] = set()
        self._waiters: dict[int, list[asyncio.Future[CommandRecord]]] = {}
        self._listeners: list[Listener] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve commands interrupted by a restart, expire stale ones, resume the rest."""
        now = self.clock()

        def recover(conn: Connection) -> tuple[list[CommandRecord], list[tuple[int, str]]]:
            resolved = [
                r for i in store.ids_in_state_sync(conn, "IN_PROGRESS")
                if (r := store.transition_sync(conn, i, "IN_PROGRESS", "FAILED", now, SYSTEM, RESTARTED))
            ]
            resolved += self._expire_sync(conn, now)
            pending = store.list_sync(conn, states=["PENDING"], limit=1_000_000, oldest_first=True)
            return resolved, [(r.id, r.asset) for r in pending]

        resolved, pending = await self.db.run(recover)
        self._started = True
        for record in resolved:
            self._notify(record)
        for command_id, asset in pending:
            self._enqueue(command_id, asset)
        self._sweeper = asyncio.create_task(self._sweep(), name="command-expiry")

    async def close(self) -> None:
        """Idempotent. Stop the workers; a command interrupted mid-execution is marked FAILED now
        (it would be on the next start anyway); pending ones stay PENDING for the next start."""
        if self._stopping:
            return
        self._stopping = True
        tasks = [*self._workers.values(), *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        interrupted, now = sorted(self._running), self.clock()
        if interrupted:
            await self.db.run(lambda conn: [
                store.transition_sync(conn, i, "IN_PROGRESS", "FAILED", now, SYSTEM, STOPPED)
                for i in interrupted])

    # -- API ------------------------------------------------------------------------------------

    async def submit(
        self, request: CommandRequest, actor: Actor, idempotency_key: str | None = None
    ) -> tuple[CommandRecord, bool]:
        """Validate and store a command; (record, replayed). Raises CommandRejected (audited),
        store.IdempotencyConflict, or CommandRejected(status=428) when a key is required."""
        if not self._started or self._stopping:
            raise CommandRejected("the command queue is not running", 503)
        if idempotency_key is None and self.config.require_idempotency_key:
            raise CommandRejected("an Idempotency-Key header is required", 428)
        if idempotency_key is not None:
            key = idempotency_key
            replay = await self.db.run(lambda conn: store.lookup_sync(conn, actor, key, request))
            if replay is not None:
                return replay, True
        try:
            await self._validate(request)
            pending = await self.db.run(lambda conn: store.count_pending_sync(conn, request.asset))
            if pending >= self.config.max_pending_per_asset:
                raise CommandRejected(f"{request.asset} already has {pending} pending commands", 429)
        except CommandRejected as exc:
            target = {"asset": request.asset, **({"signal": request.tag} if request.tag else {})}
            await AuditLog(self.db).append(actor.entry(
                f"command.{request.command}", "rejected", target=target, detail=exc.reason,
                requested=request.value if request.tag else list(request.args),
                correlation_id=idempotency_key,
            ))
            raise
        now = self.clock()
        ttl = min(request.ttl_s or self.config.default_ttl_s, self.config.max_ttl_s)
        expires = now + timedelta(seconds=ttl)
        record, replayed = await self.db.run(
            lambda conn: store.insert_sync(conn, request, actor, idempotency_key, now, expires))
        if not replayed:
            self._notify(record)
            self._enqueue(record.id, record.asset)
        return record, replayed

    async def _validate(self, request: CommandRequest) -> None:
        if self.validate is None:
            return
        result = self.validate(request)
        if inspect.isawaitable(result):
            await result

    async def cancel(self, command_id: int, actor: Actor) -> CommandRecord:
        now = self.clock()

        def work(conn: Connection) -> CommandRecord | None:
            return store.transition_sync(conn, command_id, "PENDING", "CANCELLED", now, actor,
                                         f"cancelled by {actor.sub}")

        record = await self.db.run(work)
        if record is None:
            current = await self.get(command_id)
            if current is None:
                raise KeyError(command_id)
            raise CommandConflict(f"command {command_id} is {current.state}; only PENDING can be cancelled")
        self._notify(record)
        return record

    async def get(self, command_id: int) -> CommandRecord | None:
        return await self.db.run(lambda conn: store.get_sync(conn, command_id))

    async def list_commands(self, *, states: tuple[str, ...] = (), asset: str | None = None, limit: int = 100,
                   before_id: int | None = None, assets: Collection[str] | None = None) -> list[CommandRecord]:
        """Newest first; ``assets`` limits them to the caller's scope (None: every asset)."""
        return await self.db.run(lambda conn: store.list_sync(conn, states=states, asset=asset, limit=limit,
                                                              before_id=before_id, assets=assets))

    async def wait(self, command_id: int) -> CommandRecord:
        """The command once it reached a final state; bound it with ``asyncio.timeout``."""
        future: asyncio.Future[CommandRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(future)  # before reading: no lost wake-up
        try:
            current = await self.get(command_id)
            if current is None:
                raise KeyError(command_id)
            if current.terminal:
                return current
            return await future
        finally:
            waiters = self._waiters.get(command_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(command_id, None)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Every state change, for the command-status stream; listeners must only enqueue."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def expire_due(self) -> list[CommandRecord]:
        now = self.clock()
        expired = await self.db.run(lambda conn: self._expire_sync(conn, now))
        for record in expired:
            self._notify(record)
        return expired

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _expire_sync(conn: Connection, now: datetime) -> list[CommandRecord]:
        return [
            r for i in store.expired_ids_sync(conn, now)
            if (r := store.transition_sync(conn, i, "PENDING", "EXPIRED", now, SYSTEM, "time to live ended"))
        ]

    def _notify(self, record: CommandRecord) -> None:
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:  # a broken stream must not break the queue
                log.exception("command listener failed")
        if record.terminal:
            for future in self._waiters.get(record.id, []):
                if not future.done():
                    future.set_result(record)

    def _enqueue(self, command_id: int, asset: str) -> None:
        key = self.serial_key(asset)
        self._queues.setdefault(key, deque()).append(command_id)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._worker(key), name=f"commands-{key}")

    async def _worker(self, key: str) -> None:
        queue = self._queues[key]
        try:
            while queue and not self._stopping:
                await self._run_one(queue.popleft())
        finally:
            # No await between the empty check and this removal, so _enqueue never sees a worker that
            # is about to exit.
            self._workers.pop(key, None)
            if not queue:
                self._queues.pop(key, None)

    async def _run_one(self, command_id: int) -> None:
        now = self.clock()

        def claim(conn: Connection) -> CommandRecord | None:
            current = store.get_sync(conn, command_id)
            if current is None or current.state != "PENDING":
                return None  # cancelled or expired while queued
            if current.expires_at <= now:
                return store.transition_sync(conn, command_id, "PENDING", "EXPIRED", now, SYSTEM,
                                             "time to live ended before execution")
            return store.transition_sync(conn, command_id, "PENDING", "IN_PROGRESS", now, SYSTEM)

        record = await self.db.run(claim)
        if record is None:
            return
        self._notify(record)
        if record.state != "IN_PROGRESS":
            return
        self._running.add(command_id)
        outcome: CommandState = "COMPLETED"
        reason: str | None = None
        try:
            async with asyncio.timeout(self.config.execute_timeout_s):
                await self.execute(record)
        except TimeoutError:
            outcome, reason = "FAILED", f"timed out after {self.config.execute_timeout_s:g} s"
        except Exception as exc:  # the callback reports every failure as an exception with the reason
            outcome, reason = "FAILED", str(exc) or type(exc).__name__
        # Not in a finally: when close() cancels us mid-execution the id must stay in _running, so
        # close() can mark it FAILED.
        self._running.discard(command_id)
        done = self.clock()
        final = await self.db.run(lambda conn: store.transition_sync(
            conn, command_id, "IN_PROGRESS", outcome, done, SYSTEM, reason))
        if final is not None:
            self._notify(final)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            with contextlib.suppress(Exception):  # a database hiccup must not kill the sweeper
                await self.expire_due()
