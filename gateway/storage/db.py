"""One SQLAlchemy engine for the edge API's tables, SQLite by default, PostgreSQL by URL.

The engine is synchronous and every database call runs on a small thread pool through
:meth:`Database.run`, so the event loop never blocks on disk or network. SQLite gets a single
worker thread: it allows one writer at a time anyway, and serialising in-process avoids
``database is locked`` retries; PostgreSQL gets a few. Each ``run`` is one transaction.

SQLite runs in WAL mode with ``synchronous=NORMAL`` (like the outbox): it survives a killed process,
which is what "the command queue survives a gateway restart" needs. Its transactions begin IMMEDIATE,
so two gateways sharing one file wait for each other (``busy_timeout``) instead of failing.

:meth:`Database.start` brings the schema to the newest Alembic revision (storage/migrate.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from gateway.common.configfile import StrictModel
from gateway.storage import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FILE = "twinedge.db"
# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back and may
# simply run again (two writers took row locks in opposite orders, e.g. a cancel racing the expiry sweep).
RETRYABLE_SQLSTATES = ("40P01", "40001")
ATTEMPTS = 3


class StorageConfig(StrictModel):
    """``storage:`` in gateway.yaml. ``url`` is a SQLAlchemy URL; None means a SQLite file
    ``<gateway.data_dir>/twinedge.db``. PostgreSQL: ``postgresql+psycopg://user:pass@host/db``."""

    url: str | None = Field(default=None, examples=["postgresql+psycopg://twinedge@127.0.0.1/twinedge"])

    def resolved_url(self, data_dir: Path) -> str:
        if self.url is not None:
            return self.url
        return f"sqlite:///{(data_dir / DEFAULT_FILE).as_posix()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own BEGIN is deferred; _begin_immediate below issues ours instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    """Every SQLite transaction takes the write lock at BEGIN. A deferred transaction that reads and
    then writes (the audit chain reads its head, then appends) cannot wait for the lock when another
    process wrote in between: SQLite fails it at once with "database is locked" whatever the busy
    timeout. Taken at BEGIN, the lock is waited for (busy_timeout) like any other."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The engine plus the thread pool its calls run on. The constructor does no I/O."""

    def __init__(self, url: str, *, schema: str | None = None, pool_threads: int = 4) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if schema is not None:
                raise ValueError("a schema is a PostgreSQL option; SQLite has one per file")
            # The one worker thread owns every connection, but not the thread that created the pool.
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # a restarted PostgreSQL must not fail the next command
            if schema is not None:
                # Tests put each run in its own schema; tables are declared without one. The search
                # path, unlike a schema_translate_map, also covers Alembic's ALTERs and reflection.
                kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _begin_immediate)
        self.schema = schema
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else pool_threads, thread_name_prefix="twinedge-db"
        )
        self._closed = False

    @classmethod
    def from_config(cls, config: StorageConfig, data_dir: Path) -> Database:
        return cls(config.resolved_url(data_dir))

    def upgrade_sync(self) -> None:
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(self.engine)

    async def start(self) -> None:
        """Create the schema or migrate it to the newest revision (``alembic upgrade head``)."""
        await self.call(self.upgrade_sync)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function on the database threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def transaction_sync(self, fn: Callable[[Connection], T]) -> T:
        attempt = 1
        while True:
            try:
                with self.engine.begin() as conn:
                    return fn(conn)
            except OperationalError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in RETRYABLE_SQLSTATES or attempt == ATTEMPTS:
                    raise
                log.info("storage: transaction rolled back (%s), attempt %d of %d", sqlstate, attempt, ATTEMPTS)
                attempt += 1

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
        await self.call(self.engine.dispose)
        self._executor.shutdown(wait=True)
