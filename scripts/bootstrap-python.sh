#!/usr/bin/env bash
# Makes `python3 -m venv` work on a fresh Debian/Ubuntu machine, where venv (ensurepip) and pip are
# separate packages: python3-venv and python3-pip, plus pythonX.Y-venv for the interpreter's own
# version when the distribution has it. The Makefile runs this when creating .venv failed, then retries.
# As root it installs them with apt-get; otherwise it prints the exact command and exits 1.
#
# usage: scripts/bootstrap-python.sh [PYTHON]   (default python3; DRY_RUN=1 prints instead of installing)
set -euo pipefail
python="${1:-python3}"
dry_run="${DRY_RUN:-0}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "$python not found: install Python 3.11 or newer (sudo apt-get install -y python3)" >&2
    exit 1
fi
version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

need=(python3-venv python3-pip)
# python3-venv pulls in the default interpreter's venv; a non-default interpreter needs its own.
if command -v apt-cache >/dev/null 2>&1 && apt-cache show "python${version}-venv" >/dev/null 2>&1; then
    need+=("python${version}-venv")
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "'$python -m venv' failed and this is not a Debian/Ubuntu system (no apt-get):" >&2
    echo "install the venv and pip modules for $python with your package manager" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "'$python -m venv' failed: Python's venv module is missing. Install it with:" >&2
    echo "    sudo apt-get install -y ${need[*]}" >&2
    echo "then run make again." >&2
    exit 1
fi

echo "installing ${need[*]} with apt-get"
if [ "$dry_run" = 1 ]; then
    echo "(dry run) DEBIAN_FRONTEND=noninteractive apt-get update -qq"
    echo "(dry run) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${need[*]}"
    exit 0
fi
DEBIAN_FRONTEND=noninteractive apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
