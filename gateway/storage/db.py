"""One SQLAlchemy engine for the edge API's tables, SQLite by default, PostgreSQL by URL.

The engine is synchronous and every database call runs on a small thread pool through
:meth:`Database.run`, so the event loop never blocks on disk or network. SQLite gets a single
worker thread: it allows one writer at a time anyway, and serialising in-process avoids
``database is locked`` retries; PostgreSQL gets a few. Each ``run`` is one transaction.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (like the outbox): it survives a killed process,
which is what "the command queue survives a gateway restart" needs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from gateway.common.configfile import StrictModel
from gateway.storage.tables import metadata

T = TypeVar("T")

DEFAULT_FILE = "twinedge.db"


class StorageConfig(StrictModel):
    """``storage:`` in gateway.yaml. ``url`` is a SQLAlchemy URL; None means a SQLite file
    ``<gateway.data_dir>/twinedge.db``. PostgreSQL: ``postgresql+psycopg://user:pass@host/db``."""

    url: str | None = Field(default=None, examples=["postgresql+psycopg://twinedge@127.0.0.1/twinedge"])

    def resolved_url(self, data_dir: Path) -> str:
        if self.url is not None:
            return self.url
        return f"sqlite:///{(data_dir / DEFAULT_FILE).as_posix()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """The engine plus the thread pool its calls run on. The constructor does no I/O."""

    def __init__(self, url: str, *, schema: str | None = None, pool_threads: int = 4) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            # The one worker thread owns every connection, but not the thread that created the pool.
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL must not fail the next command
        engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        # Tests put each run in its own PostgreSQL schema; tables are declared without one.
        self.engine: Engine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )
        self._raw_engine = engine
        self.schema = schema
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else pool_threads, thread_name_prefix="twinedge-db"
        )
        self._closed = False

    @classmethod
    def from_config(cls, config: StorageConfig, data_dir: Path) -> Database:
        return cls(config.resolved_url(data_dir))

    def create_all_sync(self) -> None:
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        with self.engine.begin() as conn:
            metadata.create_all(conn)

    async def start(self) -> None:
        """Create missing tables. Schema changes beyond that need a migration tool (Alembic)."""
        await self.call(self.create_all_sync)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function on the database threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def transaction_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in one transaction: committed if it returns, rolled back if it raises."""
        return await self.call(self.transaction_sync, fn)

    def ping_sync(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Idempotent: dispose the pool and stop the worker threads."""
        if self._closed:
            return
        self._closed = True
        await self.call(self._raw_engine.dispose)
        self._executor.shutdown(wait=True)
