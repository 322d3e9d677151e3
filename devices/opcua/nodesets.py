"""Companion and TwinEdge type nodesets, imported at start in the order nodesets/manifest.json gives.

asyncua refuses a NodeSet2 file whose RequiredModels are not loaded yet (conventions.md §1.6), so the
order is declared, never discovered (ARCHITECTURE.md habit 7). A missing directory or manifest means
"no nodesets": the server must start without companion specifications.

manifest.json::

    {"nodesets": [{"file": "Opc.Ua.Di.NodeSet2.xml", "uri": "http://opcfoundation.org/UA/DI/"}, ...]}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from devices.opcua._ua import Server

log = logging.getLogger(__name__)

NODESETS_DIR = Path(__file__).resolve().parents[2] / "nodesets"


@dataclass(frozen=True)
class NodesetEntry:
    file: Path
    uri: str


def read_manifest(directory: Path = NODESETS_DIR) -> list[NodesetEntry]:
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return []
    data = json.loads(manifest.read_text(encoding="utf-8"))
    entries = []
    for index, item in enumerate(data.get("nodesets", [])):
        if not isinstance(item, dict) or "file" not in item or "uri" not in item:
            raise ValueError(f"{manifest}: nodesets[{index}] needs 'file' and 'uri'")
        path = directory / str(item["file"])
        if not path.is_file():
            raise ValueError(f"{manifest}: nodesets[{index}].file = {item['file']!r}: no such file")
        entries.append(NodesetEntry(path, str(item["uri"])))
    return entries


async def import_nodesets(server: Server, directory: Path = NODESETS_DIR) -> list[str]:
    """Import the manifest's nodesets in order; returns the namespace URIs now available."""
    imported = []
    for entry in read_manifest(directory):
        await server.import_xml(str(entry.file))
        imported.append(entry.uri)
        log.debug("imported nodeset %s (%s)", entry.file.name, entry.uri)
    return imported
