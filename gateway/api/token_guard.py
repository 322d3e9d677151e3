"""Is a well-signed token still good? Storage answers (storage/revocations.py); this caches the answer.

The REST latency goal (p99 20 ms under load) rules out a database round trip per request on SQLite,
whose one worker thread also carries the alert and command writes. So an answer is kept for
``api.auth.revocation_check_s`` seconds per ``jti``; a request costs at most one indexed lookup and
usually none. Logouts and user changes made through this gateway drop the affected entries at once,
so here they apply immediately; another gateway sharing the database sees them within that time.
The cache is bounded: when full, expired entries go, and if that is not enough, all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.storage.revocations import TokenRevocations

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Answer:
    until: float
    username: str
    valid: bool


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

    def forget_user(self, username: str) -> None:
        self._epoch += 1
        for jti in [jti for jti, answer in self._answers.items() if answer.username == username]:
            del self._answers[jti]

    def _remember(self, jti: str, answer: _Answer, now: float) -> None:
        if len(self._answers) >= MAX_ENTRIES:
            self._answers = {k: v for k, v in self._answers.items() if v.until > now}
            if len(self._answers) >= MAX_ENTRIES:
                self._answers.clear()
        self._answers[jti] = answer
