"""Is a well-signed token still good? Storage answers (storage/revocations.py); this caches the answer.

The REST latency goal (p99 20 ms under load) rules out a database round trip per request on SQLite,
whose one worker thread also carries the alert and command writes. So an answer is kept for
``api.auth.revocation_check_s`` seconds per ``jti``; a request costs at most one indexed lookup and
usually none. Logouts and user changes made through this gateway drop the affected entries at once,
so here they apply immediately; another gateway sharing the database sees them within that time.
The cache is bounded: when full, expired entries go, and if that is not enough, all of them.

Open WebSocket streams outlive their handshake, so their tokens are watched (``watch``) until the stream
ends: a timer per token fires at its expiry (a heap entry in the event loop, nothing polled), a local
logout or user change re-checks the affected tokens at once, and a sweep every ``revocation_check_s``
re-checks all of them in one query, for revocations made through another gateway. None of it runs per
message, so the fan-out cost stays what it was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.storage.revocations import Token, TokenRevocations

log = logging.getLogger(__name__)

MAX_ENTRIES = 10_000
MIN_SWEEP_S = 1.0  # revocation_check_s may be 0 ("ask on every request"); the sweep must not spin
REVOKED = "token revoked"
EXPIRED = "token expired"


@dataclass(frozen=True, slots=True)
class _Answer:
    until: float
    username: str
    valid: bool


@dataclass(eq=False, slots=True)  # compared by identity: two streams on one token are two watches
class _Watch:
    """An open stream's token; ``end(reason)`` is called once when it stops being good."""

    token: Token
    end: Callable[[str], None]
    timer: asyncio.TimerHandle = field(init=False)


class TokenGuard:
    def __init__(
        self, store: TokenRevocations, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.lookups = 0  # storage round trips, for tests and metrics
        self._answers: dict[str, _Answer] = {}
        # Bumped by every forget: an answer read from storage before a concurrent logout or user change
        # committed must not be cached after it.
        self._epoch = 0
        self._watches: set[_Watch] = set()
        self._sweeper: asyncio.Task[None] | None = None  # runs while something is watched
        self._rechecks: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references

    async def valid(self, username: str, jti: str, stamp: str) -> bool:
        now = self.clock()
        answer = self._answers.get(jti)
        if answer is not None and answer.until > now and answer.username == username:
            return answer.valid
        epoch = self._epoch
        self.lookups += 1
        valid = await self.store.is_valid(username, jti, stamp)
        if self.ttl_s > 0 and epoch == self._epoch:
            self._remember(jti, _Answer(now + self.ttl_s, username, valid), now)
        return valid

    def forget_token(self, jti: str) -> None:
        self._epoch += 1
        self._answers.pop(jti, None)
        self._recheck_soon([w for w in self._watches if w.token.jti == jti])

    def forget_user(self, username: str) -> None:
        self._epoch += 1
        for jti in [jti for jti, answer in self._answers.items() if answer.username == username]:
            del self._answers[jti]
        # Re-checked rather than ended: a refused change (the last admin) forgets too, and revokes nothing.
        self._recheck_soon([w for w in self._watches if w.token.username == username])

    def watch(self, token: Token, lifetime_s: float, end: Callable[[str], None]) -> Callable[[], None]:
        """Call ``end(EXPIRED)`` in ``lifetime_s``, or ``end(REVOKED)`` once the token is found revoked,
        unless the returned function (stop watching) is called first."""
        loop = asyncio.get_running_loop()
        watch = _Watch(token, end)
        watch.timer = loop.call_later(lifetime_s, self._end, watch, EXPIRED)
        self._watches.add(watch)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        return functools.partial(self._unwatch, watch)

    def _unwatch(self, watch: _Watch) -> None:
        if watch not in self._watches:
            return
        self._watches.remove(watch)
        watch.timer.cancel()
        if not self._watches and self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _end(self, watch: _Watch, reason: str) -> None:
        if watch in self._watches:  # the stream may have ended, or been ended, meanwhile
            self._unwatch(watch)
            watch.end(reason)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(self.ttl_s, MIN_SWEEP_S))
            await self._recheck(list(self._watches))

    def _recheck_soon(self, watches: list[_Watch]) -> None:
        if watches:
            task = asyncio.get_running_loop().create_task(self._recheck(watches))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, watches: list[_Watch]) -> None:
        """End the watches whose token storage no longer finds good, asking once for all of them."""
        self.lookups += 1
        try:
            good = await self.store.good_tokens({w.token for w in watches})
        except Exception:
            # The streams were good at the last check; the next sweep asks again.
            log.warning("token guard: re-checking the tokens of open streams failed", exc_info=True)
            return
        for watch in watches:
            if watch.token not in good:
                self._end(watch, REVOKED)

    def _remember(self, jti: str, answer: _Answer, now: float) -> None:
        if len(self._answers) >= MAX_ENTRIES:
            self._answers = {k: v for k, v in self._answers.items() if v.until > now}
            if len(self._answers) >= MAX_ENTRIES:
                self._answers.clear()
        self._answers[jti] = answer

