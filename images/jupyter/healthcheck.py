"""Healthcheck of chexstack/jupyter: GET /api (no token needed; it only reports the version)."""

import os
import sys
import urllib.request

port = os.environ.get("JUPYTER_PORT", "8888")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=4) as reply:
        sys.exit(0 if reply.status == 200 else 1)
except OSError as exc:
    print(f"jupyter not answering on {port}: {exc}", file=sys.stderr)
    sys.exit(1)
