#!/usr/bin/env bash
# stomp.py (PyPI) over its WebSocket transport against a stompede binary.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m unittest -v test_stomppy.py
