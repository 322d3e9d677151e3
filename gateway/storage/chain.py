"""The audit log's hash chain (conventions §6.3: "hash-chain entries if tamper evidence is wanted").

Each row stores ``prev_hash`` (the hash of the row before it, :data:`GENESIS` for the first) and
``hash`` = SHA-256 over a canonical JSON of ``prev_hash`` and the row's fields. Editing a row breaks
its own hash; removing or reordering rows breaks the next row's ``prev_hash``; removing rows from the
end breaks the match with the one-row ``audit_chain_head`` table. The chain proves the log was not
edited through the database by someone who cannot also recompute every later hash; it is evidence,
not a signature.

The canonical form must come out the same from an entry about to be written and from the row read
back, on SQLite and PostgreSQL: timestamps as UTC ISO 8601 with microseconds (naive ones, as SQLite
returns them, are UTC), JSON values as the JSON columns return them, keys sorted. Changing this form
breaks every chain already written (revision 0002 chained the rows from before it with it): don't.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from gateway.storage.tables import audit_chain_head, audit_log

GENESIS = "0" * 64
HEAD_ID = 1
FIELDS = ("ts", "actor", "roles", "ip", "action", "target", "requested", "result", "detail", "correlation_id",
          "channel")
PAGE = 1000


def _plain(value: Any) -> Any:
    """What a JSON column gives back for ``value`` (tuples become lists, keys become strings)."""
    return json.loads(json.dumps(value))


def _utc(ts: datetime) -> str:
    aware = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def entry_hash(prev_hash: str, fields: Mapping[Any, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``prev_hash`` and the audit ``fields`` (:data:`FIELDS`)."""
    document = {name: _plain(fields[name]) for name in FIELDS if name != "ts"}
    document["ts"] = _utc(fields["ts"])
    document["prev_hash"] = prev_hash
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    rows: int  # rows checked
    first_broken_id: int | None = None
    reason: str | None = None


def verify_sync(conn: Connection) -> ChainReport:
    """Walk the log in id order, a page at a time, recomputing every hash.

    Rows appended while this runs are left out: the head is read first, and because appends take
    their id under the head's lock, every row up to ``head.last_id`` is committed by then.
    """
    head = conn.execute(select(audit_chain_head).where(audit_chain_head.c.id == HEAD_ID)).one_or_none()
    if head is None:
        return ChainReport(False, 0, None, "the audit_chain_head row is missing")
    expected, checked, after = GENESIS, 0, 0
    while head.last_id is not None:
        rows = conn.execute(select(audit_log).where(audit_log.c.id > after, audit_log.c.id <= head.last_id)
                            .order_by(audit_log.c.id).limit(PAGE)).all()
        if not rows:
            break
        for row in rows:
            if row.prev_hash != expected:
                return ChainReport(False, checked, row.id,
                                   "prev_hash differs from the previous row's hash: rows removed or reordered")
            if entry_hash(row.prev_hash, row._mapping) != row.hash:
                return ChainReport(False, checked, row.id, "the row's content does not match its hash: modified")
            expected, checked, after = row.hash, checked + 1, row.id
    if head.hash != expected:
        # The head names the newest row; it is gone or is not the last one any more.
        return ChainReport(False, checked, head.last_id,
                           "the chain head does not match the last row: rows removed from the end")
    return ChainReport(True, checked)
