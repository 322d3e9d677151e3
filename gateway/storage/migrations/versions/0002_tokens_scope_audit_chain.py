"""Token revocation, per-site user scope, and the audit log's hash chain.

- users.sites (JSON list, empty: every site) and users.token_stamp (tokens carrying another stamp
  are revoked); existing users get every site and an empty stamp.
- revoked_tokens: tokens logged out before they expire.
- audit_log.prev_hash / hash and the one-row audit_chain_head; existing rows are chained in id order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.chain import FIELDS, GENESIS, HEAD_ID, entry_hash

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("sites", sa.JSON, nullable=False, server_default=sa.text("'[]'")))
        batch.add_column(sa.Column("token_stamp", sa.String(32), nullable=False, server_default=""))
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])

    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.Integer, nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    assert head is not None
    last_id, last_hash = _chain_existing_rows()
    op.bulk_insert(head, [{"id": HEAD_ID, "last_id": last_id, "hash": last_hash}])
    with op.batch_alter_table("audit_log") as batch:
        batch.alter_column("prev_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("hash", existing_type=sa.String(64), nullable=False)


def _chain_existing_rows() -> tuple[int | None, str]:
    """Hash the rows written before the chain existed, in id order; (last id, last hash)."""
    log = sa.table("audit_log", sa.column("id", sa.Integer), sa.column("ts", sa.DateTime(timezone=True)),
                   *(sa.column(name, sa.JSON) for name in ("roles", "target", "requested")),
                   *(sa.column(name, sa.String) for name in FIELDS
                     if name not in ("ts", "roles", "target", "requested")),
                   sa.column("prev_hash", sa.String), sa.column("hash", sa.String))
    conn = op.get_bind()
    last_id: int | None = None
    prev = GENESIS
    for row in conn.execute(sa.select(log).order_by(log.c.id)).all():
        digest = entry_hash(prev, row._mapping)
        conn.execute(sa.update(log).where(log.c.id == row.id).values(prev_hash=prev, hash=digest))
        last_id, prev = row.id, digest
    return last_id, prev


def downgrade() -> None:
    op.drop_table("audit_chain_head")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
    op.drop_index("ix_revoked_tokens_expires_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("token_stamp")
        batch.drop_column("sites")
