"""Wiring of the edge API's stateful parts: storage, auth, alerts, command queue, and their routers.

The runtime builds one :class:`EdgeServices` from config, includes its routers in the app, starts it
after the database is reachable and before sources connect, feeds alerts with each batch, and
closes it on shutdown::

    edge = EdgeServices(Database.from_config(cfg.storage, data_dir), data_dir=data_dir,
                        auth=cfg.api.auth, alerts=cfg.alerts, commands=cfg.commands,
                        execute=runtime.execute_command, validate=catalogue_validator(catalogue))
    for router in edge.routers(asset_exists=state.assets.__contains__, scope=state.visible_ids):
        app.include_router(router)
    admin = await edge.start()          # print admin.password once when it is not None
    ...
    await edge.alerts.process(batch)    # in the pipeline, after LatestValues.update
    ...
    await edge.close()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from fastapi import APIRouter

from gateway.alerts.service import AlertsConfig, AlertService
from gateway.alerts.store import AlertStore
from gateway.api.auth import AuthConfig, Authenticator, BootstrapAdmin, load_or_create_secret
from gateway.api.routes_alerts import build_alerts_router
from gateway.api.routes_auth import build_auth_router
from gateway.api.routes_commands import build_commands_router
from gateway.api.routes_users import build_users_router
from gateway.api.state import AssetScope, no_assets_known
from gateway.commands.queue import CommandQueue, CommandQueueConfig, Execute, Validate
from gateway.storage.audit import AuditLog
from gateway.storage.db import Database
from gateway.storage.users import UserStore


def build_edge_routers(
    auth: Authenticator, alerts: AlertService, commands: CommandQueue, audit: AuditLog,
    *, asset_exists: Callable[[str], bool] | None = None, scope: AssetScope = no_assets_known,
) -> list[APIRouter]:
    """The routers of auth and users, alerts and rules, commands, audit and the seed route; ``scope``
    gives the assets a caller limited to some sites may see."""
    return [
        build_auth_router(auth, audit),
        build_users_router(auth, audit),
        build_alerts_router(alerts, auth, asset_exists=asset_exists, scope=scope),
        build_commands_router(commands, auth, audit, scope=scope),
    ]


class EdgeServices:
    """Everything behind the edge routers. The constructor does no I/O; ``start``/``close`` do."""

    def __init__(
        self,
        db: Database,
        *,
        data_dir: Path,
        execute: Execute,
        validate: Validate | None = None,
        auth: AuthConfig | None = None,
        alerts: AlertsConfig | None = None,
        commands: CommandQueueConfig | None = None,
        serial_key: Callable[[str], str] = lambda asset: asset,
        env: Mapping[str, str] = os.environ,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.db = db
        self.env = env
        self.audit = AuditLog(db)
        self.users = UserStore(db)
        auth_config = auth or AuthConfig()
        self.auth = authenticator or Authenticator(
            auth_config, self.users, lambda: load_or_create_secret(auth_config, data_dir))
        self.alerts = AlertService(AlertStore(db), self.audit, alerts)
        self.commands = CommandQueue(db, execute, validate, commands, serial_key=serial_key)

    def routers(
        self, *, asset_exists: Callable[[str], bool] | None = None, scope: AssetScope = no_assets_known
    ) -> list[APIRouter]:
        return build_edge_routers(self.auth, self.alerts, self.commands, self.audit,
                                  asset_exists=asset_exists, scope=scope)

    async def start(self) -> BootstrapAdmin | None:
        """Migrate the schema to the newest revision, create the first admin (returned so the caller
        prints a generated password once), load rules and open alerts, and resolve and resume commands."""
        await self.db.start()
        self.auth.load_secret()
        admin = await self.auth.bootstrap(self.env)
        await self.alerts.start()
        await self.commands.start()
        return admin

    async def close(self) -> None:
        """Idempotent; stops the command workers before the database goes."""
        await self.commands.close()
        await self.db.close()
