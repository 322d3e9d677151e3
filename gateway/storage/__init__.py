"""Relational storage of the edge API (users, alerts, commands, audit log) through SQLAlchemy."""

from gateway.storage.audit import SYSTEM, Actor, AuditEntry, AuditLog
from gateway.storage.db import Database, StorageConfig

__all__ = ["SYSTEM", "Actor", "AuditEntry", "AuditLog", "Database", "StorageConfig"]
