"""Relational storage of the edge API (users, alerts, commands, audit log) through SQLAlchemy."""

from gateway.storage.audit import AuditEntry, AuditLog
from gateway.storage.db import Database, StorageConfig

__all__ = ["AuditEntry", "AuditLog", "Database", "StorageConfig"]
