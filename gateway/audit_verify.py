"""`twinedge audit-verify`: check the audit log's hash chain in a gateway's database, from the shell.

Reads only: it neither creates a database nor migrates one. Exit status 0 when the chain is intact,
1 when it is broken (the first broken row and the reason are printed), 2 when the database cannot be
checked (no file, or a schema older than this gateway's: start the gateway once to migrate it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from gateway.storage.chain import verify_sync
from gateway.storage.db import StorageConfig
from gateway.storage.migrate import current_revision, head_revision


def verify_database(storage: StorageConfig, data_dir: Path) -> int:
    url = make_url(storage.resolved_url(data_dir))
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        print(f"no database at {url.database}", file=sys.stderr)
        return 2
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            current, head = current_revision(conn), head_revision()
            if current != head:
                print(f"the database schema is at revision {current}, not {head}: start the gateway once to "
                      "migrate it", file=sys.stderr)
                return 2
            report = verify_sync(conn)
    finally:
        engine.dispose()
    if report.intact:
        print(f"audit log intact: {report.rows} rows")
        return 0
    print(f"audit log BROKEN at row {report.first_broken_id} ({report.rows} rows intact before it): {report.reason}")
    return 1
