"""Regenerate nodesets/ from the tag tables: the TwinEdge types NodeSet2 XML and the load-order manifest.

    .venv/bin/python scripts/gen_nodesets.py            # write nodesets/
    .venv/bin/python scripts/gen_nodesets.py --check    # exit 1 if the committed files are stale

tests/test_opcua_types.py runs the check, so a tag-table change without a regeneration fails CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from devices.assets.registry import ASSET_TYPES  # noqa: E402
from devices.opcua.typemodel import NODESET_FILE, generate, manifest  # noqa: E402

NODESETS_DIR = ROOT / "nodesets"
REGENERATE = ".venv/bin/python scripts/gen_nodesets.py"


def expected_files() -> dict[Path, str]:
    return {
        NODESETS_DIR / NODESET_FILE: generate(ASSET_TYPES),
        NODESETS_DIR / "manifest.json": json.dumps(manifest(), indent=2) + "\n",
    }


def stale_files() -> list[Path]:
    return [
        path
        for path, text in expected_files().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (regenerate with: {REGENERATE})")
        return 1 if stale else 0
    NODESETS_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
