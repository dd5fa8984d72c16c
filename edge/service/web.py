"""The small local web servers of the technician's tools (the labelling page, the fleet page).

They answer only to the names of the address they were bound to (and the loopback names), so that a
web page the technician visits cannot reach them through a name of its own (DNS rebinding); a request
that changes something must also come from the page itself (its ``Origin``, when the browser sends
one). Every answer in JSON is strict JSON: no ``NaN`` or ``Infinity``, which a browser refuses.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import signal
import socket
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from edge.errors import SmartbinError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
MAX_DEPTH = 32


def depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (0 for a number or a text)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in children)
    return deepest


def strict_json(raw: bytes | str) -> Any:
    """JSON as a browser reads it, and as any thread can write it again: ``NaN``, ``Infinity``, numbers
    past a float's range and lists or objects nested deeper than ``MAX_DEPTH`` are refused with a
    ValueError."""

    def constant(name: str) -> float:
        raise ValueError(f"{name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:40]} is out of a number's range")
        return value

    try:
        value = json.loads(raw, parse_constant=constant, parse_float=finite)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH}") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    return value


def host_name(header: str) -> str:
    """The name in a ``Host`` header, in lower case, without its port or an IPv6 address's brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    return host.lower() == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback)


def allowed_names(host: str, bound_ip: str) -> frozenset[str]:
    """The names a request may give in its ``Host`` to a server asked to listen on ``host``."""
    names = {*LOOPBACK_NAMES, host.lower(), bound_ip.lower()}
    if host in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names - {""})


def host_refusal(header: str | None, allowed: frozenset[str], any_ip: bool) -> str | None:
    """Why a request with this ``Host`` is refused, or None. An IP address is never a rebound name, so
    a server listening on every address (``any_ip``) takes any."""
    name = host_name(header or "")
    if name in allowed or (any_ip and is_ip(name)):
        return None
    return (
        f"refused: this server answers to {', '.join(sorted(allowed))}, not to the name {name!r} in the "
        "request's Host: a web page reaching it through a name of its own (DNS rebinding) must not read "
        "or change anything. Open the address smartbin printed at start."
    )


def origin_refusal(origin: str | None, host: str | None) -> str | None:
    """Why a request that changes something is refused for its ``Origin``, or None: a browser names
    the page that sent it, and only this server's own page may."""
    own = f"http://{(host or '').strip().lower()}"
    if origin is None or origin.strip().lower() == own:
        return None
    return (
        f"refused: only this server's own page ({own}) may change anything, and this request came "
        f"from {origin[:100]!r}"
    )


def reach(host: str) -> str:
    """Who can open a page served on ``host``, for the line said at start."""
    if is_loopback(host):
        return "reachable only from this machine (--host 0.0.0.0 shares it on the network)"
    return f"reachable from other machines (--host {host}); --host 127.0.0.1 keeps it to this machine"


class PageServer(ThreadingHTTPServer):
    """Knows the names it answers to (``Host``), from the address it was asked to listen on."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__((host, port), handler)
        self.host = host
        self.allowed = allowed_names(host, str(self.server_address[0]))
        self.any_ip = host in WILDCARDS


class PageHandler(BaseHTTPRequestHandler):
    """Replies with a body or JSON, never cached; requests go to the debug log, not the terminal.

    A page's handler implements ``get`` (and ``post``) with the request's path, percent-decoded once
    and without its query, once the request's ``Host`` (and for a POST its ``Origin``) are its own.
    """

    server: PageServer

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
        try:
            body = json.dumps(data, allow_nan=False).encode("utf-8")
        except (ValueError, TypeError, RecursionError) as exc:
            log.error("%s: cannot answer in JSON: %s", self.path[:80], exc)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = json.dumps({"error": f"the server cannot write its answer as JSON: {exc}"}).encode()
        self.send(status, body, "application/json")

    def refuse(self, why: str) -> None:
        log.warning("%s %s: %s", self.command, self.path[:80], why)
        self.send(HTTPStatus.FORBIDDEN, why.encode("utf-8"), "text/plain; charset=utf-8")

    def route(self) -> str:
        return unquote(self.path.split("?", 1)[0])

    def do_GET(self) -> None:
        why = host_refusal(self.headers.get("Host"), self.server.allowed, self.server.any_ip)
        if why:
            self.refuse(why)
            return
        self.get(self.route())

    def do_POST(self) -> None:
        host = self.headers.get("Host")
        why = host_refusal(host, self.server.allowed, self.server.any_ip)
        why = why or origin_refusal(self.headers.get("Origin"), host)
        if why:
            self.refuse(why)
            return
        self.post(self.route())

    def get(self, path: str) -> None:
        self.send_json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {path[:80]}"})

    def post(self, path: str) -> None:
        self.send_json(HTTPStatus.NOT_FOUND, {"error": "nothing to post here"})


def listen(host: str, port: int, handler: type[PageHandler]) -> PageServer:
    try:
        return PageServer(host, port, handler)
    except OSError as exc:
        raise SmartbinError(
            f"cannot listen on {host}:{port}: {exc.strerror}", "pick another port with --port"
        ) from None


def serve(server: PageServer, url: str, open_browser: bool) -> None:
    """Say where the page is and who can reach it, then serve until Ctrl-C, having opened ``url`` in
    the user's browser if asked."""
    host = server.host or "0.0.0.0"
    # Ctrl-C and SIGTERM end it cleanly, also when it was started with SIGINT ignored (from a script,
    # in the background), which Python would otherwise keep
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"serving on {host} port {server.server_address[1]}: {reach(host)}", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
