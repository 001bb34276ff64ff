"""A static-file HTTP server on localhost for tests of pinned-URL downloads (`rutune.eval.upstream`): real HTTP,
and `hits` counts the requests so a test can show a second read came from the cache."""

from __future__ import annotations

import contextlib
import http.server
import threading
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[tuple[str, list]]:
    """Serve `root` at `http://127.0.0.1:PORT`; yields (base URL, list of logged requests)."""
    hits: list = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            hits.append(a)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
