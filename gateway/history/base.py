"""What the history readers share: the row they return, the error that sends the route to the local ring, the
reader protocol, and one HTTP client that reads with the Influx sink's own credentials."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

import httpx

from gateway.readings import TagValue
from gateway.sinks.influx import InfluxSinkConfig

# A history request waits at most this long (or the sink's timeout_s, if shorter): past it, the local ring
# answers faster than a slow server would.
DEFAULT_TIMEOUT_S = 5.0


class HistoryUnavailable(Exception):
    """The time-series server could not answer; the caller falls back to the local ring."""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    ts: datetime  # the sample's source timestamp, or the bucket start with a step
    value: TagValue | None
    count: int = 1


class HistoryReader(Protocol):
    store: ClassVar[str]  # what the route reports as ``store`` when this reader answered

    async def query(self, asset: str, tag: str, start: datetime | None, end: datetime | None,
                    step_s: float | None, limit: int) -> list[HistoryRow]: ...

    async def close(self) -> None: ...


def credentials(config: InfluxSinkConfig) -> dict[str, Any]:
    """httpx client arguments carrying the credentials the sink writes with, so a read passes wherever the writes
    pass: basic auth for ``api: v1``; for ``api: v2`` the ``Token`` scheme, which InfluxDB 2.x/3.x accept on their
    1.x-compatible ``/query`` (and an auth proxy in front of VictoriaMetrics sees the header the writes carry)."""
    if config.api == "v1":
        return {"auth": (config.username, config.password or "")} if config.username else {}
    return {"headers": {"Authorization": f"Token {config.token}"}} if config.token else {}


class HistoryHttp:
    """GETs from the time-series server; every failure (connection, timeout, HTTP status, unparsable JSON) becomes
    HistoryUnavailable naming ``server``."""

    def __init__(self, config: InfluxSinkConfig, server: str, timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None) -> None:
        self.server = server
        self._http = httpx.AsyncClient(base_url=config.url, timeout=min(timeout_s, config.timeout_s),
                                       transport=transport, **credentials(config))

    async def get_text(self, path: str, params: dict[str, str]) -> str:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise HistoryUnavailable(f"{self.server} at {self._http.base_url}: {exc!r}") from None
        if response.status_code != 200:
            raise HistoryUnavailable(f"{self.server} answered {response.status_code}: {response.text[:200]}")
        return response.text

    async def get_json(self, path: str, params: dict[str, str]) -> Any:
        text = await self.get_text(path, params)
        try:
            return json.loads(text)
        except ValueError:
            raise HistoryUnavailable(f"{self.server} answered something that is not JSON") from None

    async def close(self) -> None:
        await self._http.aclose()

