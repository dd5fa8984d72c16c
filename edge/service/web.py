"""The small local web servers of the technician's tools (the labelling page, the fleet page)."""

from __future__ import annotations

import json
import logging
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge.errors import SmartbinError

log = logging.getLogger(__name__)


class PageHandler(BaseHTTPRequestHandler):
    """Replies with a body or JSON, never cached; requests go to the debug log, not the terminal."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, data: Any) -> None:
        self.send(status, json.dumps(data).encode("utf-8"), "application/json")


def listen(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise SmartbinError(
            f"cannot listen on {host}:{port}: {exc.strerror}", "pick another port with --port"
        ) from None


def serve(server: ThreadingHTTPServer, url: str, open_browser: bool) -> None:
    """Serve until Ctrl-C, having opened ``url`` in the user's browser if asked."""
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
