"""Documents cut to what a caller limited to some sites may see (OWASP API1): pure functions over the
messages the WebSocket topics carry and the mine snapshot the seed routes serve.

``visible`` is the set of asset ids in the caller's scope. Whatever concerns another asset is left
out, as if that asset did not exist; a message about nothing visible is not sent at all (None).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Message = dict[str, Any]
# A topic's cut: (message, visible asset ids) -> the message to send, or None to send nothing.
Cut = Callable[[Message, frozenset[str]], Message | None]


def snapshot_in_scope(snapshot: Message, visible: frozenset[str]) -> Message:
    """The mine snapshot (or its ``mine_snapshot`` message) with only the visible assets; the KPIs
    stay when the asset they are read from (``kpis_asset``) is visible."""

    def mine(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        return [item for item in items if item.get(key) in visible]

    zones = []
    for zone in snapshot.get("zones", []):
        trucks = [t for t in zone["trucks"] if t in visible]
        if trucks:
            zones.append({**zone, "trucks": trucks, "count": len(trucks)})
    return {
        **snapshot,
        "trucks": mine(snapshot.get("trucks", []), "id"),
        "crushers": mine(snapshot.get("crushers", []), "id"),
        "stockpiles": mine(snapshot.get("stockpiles", []), "id"),
        "zones": zones,
        "kpis": snapshot.get("kpis", {}) if snapshot.get("kpis_asset") in visible else {},
        "alerts": mine(snapshot.get("alerts", []), "asset"),
        "recommendations": mine(snapshot.get("recommendations", []), "asset"),
    }


def _about_asset(key: str) -> Cut:
    """Messages ``{"type": ..., key: {"asset": ...}}``: sent whole when the asset is visible."""

    def cut(message: Message, visible: frozenset[str]) -> Message | None:
        return message if message.get(key, {}).get("asset") in visible else None

    return cut


# Topics without a cut send nothing to callers limited to some sites (fail closed).
TOPIC_CUTS: Mapping[str, Cut] = {
    "alerts": _about_asset("alert"),
    "commands": _about_asset("command"),
    "mine": snapshot_in_scope,
}
