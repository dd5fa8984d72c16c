"""`smartbin review DIR` faces a folder it did not write and a browser that visits other sites: links
out of the folder, sidecars that are not plain JSON (NaN, nested past the recursion limit, a FIFO),
labels with control characters, requests through another name (DNS rebinding) or from another page,
and markup in every text a bin or a sidecar gives. A real HTTP server on loopback, real files, the
real `smartbin review` process, and a real headless Chromium."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge.service.labelling import ReviewFolder, make_server
from tests.broker import wait_for
from tests.browser import CHROMIUM, DRIVER, headless_chromium, needs_chromium
from tests.conftest import REPO
from tests.test_labelling import GUESSES, TAXONOMY, get, label, post, sidecar, write_pair

PRIVATE = b"PRIVATE-CONTENT"
MARKUP = "<img src=x onerror=window.pwned=1><b id=pwn>bold</b>"


def no_nan(name: str) -> float:
    raise ValueError(f"{name} in the server's JSON")


def strict(body: bytes):
    """JSON as a browser's JSON.parse reads it."""
    return json.loads(body, parse_constant=no_nan)


@pytest.fixture()
def folder(tmp_path) -> Path:
    folder = tmp_path / "review"
    folder.mkdir()
    for n, top in enumerate(GUESSES):
        write_pair(folder, f"20261125-0100{n:02d}.000001-item{n}", top)
    return folder


def start(folder: Path):
    server = make_server(ReviewFolder(folder, TAXONOMY), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def server(folder):
    server, url = start(folder)
    yield url
    server.shutdown()
    server.server_close()


def request(url: str, method: str = "GET", body: bytes | None = None, **headers: str):
    """One request with exactly these headers (``Host`` too, or none at all)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest(method, parts.path or "/", skip_host=True, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def outside_pair(tmp_path: Path) -> Path:
    """A whole pair beside the review folder, not in it: ``outside.jpg`` + ``outside.json``."""
    (tmp_path / "outside.jpg").write_bytes(b"\xff\xd8" + PRIVATE)
    data = {"probabilities": {"paper": 0.9}, "bin": "recyclable", "label": None}
    (tmp_path / "outside.json").write_text(json.dumps(data))
    return tmp_path / "outside.json"


def test_names_with_a_folder_in_them_are_refused_by_the_name_check(folder, server, tmp_path):
    """A pair in a sub-folder is inside the review folder: only the name check refuses ``sub/x``."""
    (folder / "sub").mkdir()
    write_pair(folder / "sub", "x", ("paper",))
    (folder / "sub" / "x.jpg").write_bytes(b"\xff\xd8" + PRIVATE)
    outside = outside_pair(tmp_path)
    for name in ("sub/x", "../outside", "..", "sub/../sub/x"):
        status, answer = label(server, name=name, label="battery")
        assert status == 400 and "label not written" in answer["error"], (name, answer)
    assert json.loads((folder / "sub" / "x.json").read_text())["label"] is None
    assert json.loads(outside.read_text())["label"] is None
    for path in (
        "sub%2fx",
        "sub%2Fx",
        "..%2foutside",
        "%2e%2e%2foutside",
        "%2e%2e/outside",
        "%252e%252e%252foutside",
        "..%252foutside",
        "sub%252fx",
    ):
        status, body = get(f"{server}/photo/{path}.jpg")
        assert status == 404 and PRIVATE not in body, path
    assert "not a frame's name" in json.loads(get(f"{server}/photo/sub%2fx.jpg")[1])["error"]


def test_links_out_of_the_folder_are_neither_listed_nor_served_nor_written(folder, server, tmp_path):
    """Names the name check accepts, whose files are links out: only the folder check refuses them."""
    outside = outside_pair(tmp_path)
    (folder / "evil.jpg").symlink_to("/etc/passwd")
    (folder / "evil.json").symlink_to(outside)
    (folder / "leak.jpg").symlink_to(tmp_path / "outside.jpg")
    (folder / "leak.json").write_text(outside.read_text())
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "loop.json").symlink_to("loop.json")
    (folder / "mirror.jpg").symlink_to(next(folder.glob("*item0.jpg")).name)  # a link inside: fine
    (folder / "mirror.json").write_text(next(folder.glob("*item0.json")).read_text())
    for name in ("evil", "leak"):
        status, body = get(f"{server}/photo/{name}.jpg")
        assert status == 404 and PRIVATE not in body and b"root:" not in body, body
        assert b"a link out of the folder" in body
    assert get(f"{server}/photo/mirror.jpg")[1][:2] == b"\xff\xd8"
    catalogue = strict(get(f"{server}/api/items")[1])
    assert [i["name"] for i in catalogue["items"]][-1] == "mirror" and len(catalogue["items"]) == 4
    problems = " ".join(catalogue["problems"])
    assert "evil.jpg: a link out of the folder" in problems and "leak.jpg: a link" in problems
    assert "loop.jpg: a link that leads nowhere" in problems
    assert get(f"{server}/photo/loop.jpg")[0] == 404 and label(server, name="loop", label="paper")[0] == 400
    status, answer = label(server, name="evil", label="paper")
    assert status == 400 and "a link out of the folder" in answer["error"]
    (folder / "evil.jpg").unlink()
    write_pair(folder, "evil-photo", ("paper",))
    (folder / "evil-photo.jpg").rename(folder / "evil.jpg")  # a real photo, its JSON still a link out
    assert label(server, name="evil", label="paper")[0] == 400
    assert json.loads(outside.read_text())["label"] is None


def test_sidecars_that_are_not_plain_json_are_named_and_the_rest_still_served(folder, server):
    """NaN, Infinity, a number past a float's range, nesting past the recursion limit, a FIFO, a
    sidecar of 2 MB: each named as unreadable, the page's JSON stays strict, the rest is served."""
    bad = {
        "nan": b'{"probabilities": {"paper": NaN}, "bin": "recyclable"}',
        "inf": b'{"probabilities": {"paper": 0.5}, "confidence": Infinity}',
        "huge": b'{"probabilities": {"paper": 1e999}}',
        "deep": b'{"probabilities": {"paper": 0.5}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "big": b'{"probabilities": {"paper": 0.5}, "x": "' + b"a" * 2_000_000 + b'"}',
        "text": b'{"probabilities": {"paper": "nan"}}',
    }
    for name, raw in bad.items():
        write_pair(folder, name, ("paper",))
        (folder / f"{name}.json").write_bytes(raw)
    write_pair(folder, "fifo", ("paper",))
    (folder / "fifo.json").unlink()
    os.mkfifo(folder / "fifo.json")
    status, body = get(f"{server}/api/items")  # a FIFO read would never return (urlopen gives up at 10 s)
    catalogue = strict(body)
    assert status == 200 and [i["name"][-5:] for i in catalogue["items"]] == ["item0", "item1", "item2"]
    problems = catalogue["problems"]
    assert len(problems) == len(bad) + 1, problems
    for name in (*bad, "fifo"):
        assert any(p.startswith(f"{name}.json: unreadable") for p in problems), (name, problems)
    said = " ".join(problems)
    assert "NaN is not a JSON number" in said and "Infinity is not a JSON number" in said
    assert "1e999 is out of a number's range" in said and "nested deeper than" in said
    assert "not a regular file" in said and "larger than the 1024 KiB read" in said
    for name in (*bad.keys() - {"text"}, "fifo"):  # "text" is JSON: a label can be written into it
        status, answer = label(server, name=name, label="paper")
        assert status == 400 and "label not written" in answer["error"], (name, answer)
    assert (folder / "nan.json").read_bytes() == bad["nan"]


def test_labels_with_control_characters_are_refused(folder, server):
    name = next(folder.glob("*item0.json")).stem
    for word, bin_id in (("paper\n", None), ("new-item\n", "other"), ("pa\tper", None), ("a\x00b", "other")):
        status, answer = label(server, name=name, label=word, bin=bin_id)
        assert status == 400 and "control character" in answer["error"], (word, answer)
    assert sidecar(folder, 0)["label"] is None
    assert label(server, name=name, label="new-item", bin="other")[0] == 200


def test_requests_through_another_name_or_from_another_page_are_refused(folder, server):
    port = server.rsplit(":", 1)[1]
    name = next(folder.glob("*item0.json")).stem
    body = json.dumps({"name": name, "label": "paper"}).encode()
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", ""):
        status, answer = request(f"{server}/api/items", Host=host)
        assert status == 403 and b"DNS rebinding" in answer and str(folder).encode() not in answer, host
        status, answer = request(f"{server}/api/label", "POST", body, Host=host)
        assert status == 403, host
    assert request(f"{server}/api/items")[0] == 403  # no Host at all
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert request(f"{server}/api/items", Host=host)[0] == 200, host
    own = f"127.0.0.1:{port}"
    for origin in (f"http://evil.example:{port}", "null", f"http://localhost:{port}", f"https://{own}"):
        status, answer = request(f"{server}/api/label", "POST", body, Host=own, Origin=origin)
        assert status == 403 and b"only this server's own page" in answer, origin
    assert sidecar(folder, 0)["label"] is None
    assert request(f"{server}/api/label", "POST", body, Host=own, Origin=f"http://{own}")[0] == 200
    assert sidecar(folder, 0)["label"] == "paper"
    assert post(f"{server}/api/label", json.dumps({"name": name, "label": "empty"}).encode())[0] == 200


def rebinding_chromium(name: str):
    """Chromium resolving ``name`` to this machine, as a rebound name of a site does."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    rule = f"--host-resolver-rules=MAP {name} 127.0.0.1"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", rule):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


ATTACK = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
                     body: JSON.stringify({name: arguments[1], label: "battery"})})
  .then((r) => r.text().then((t) => done([r.status, t])), (e) => done(["failed", String(e)]));
"""


@needs_chromium
def test_a_site_rebound_to_this_machine_or_another_page_cannot_read_or_label(folder, server, tmp_path):
    """In a real browser: a site whose name now points here (DNS rebinding) reads nothing and labels
    nothing; a page of another origin cannot post a label either (its Origin is refused)."""
    from selenium.webdriver.common.by import By

    name = next(folder.glob("*item0.json")).stem
    port = server.rsplit(":", 1)[1]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>another site</title>")
    site = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path / "site")))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    browser = rebinding_chromium("rebound.example")
    try:
        browser.get(f"http://rebound.example:{port}/api/items")
        assert "DNS rebinding" in browser.find_element(By.TAG_NAME, "body").text
        status, text = browser.execute_async_script(
            ATTACK.replace('mode: "no-cors", ', ""), "/api/label", name
        )  # the rebound page posting to its own origin: its Host is not this server's
        assert status == 403 and "DNS rebinding" in text
        assert sidecar(folder, 0)["label"] is None
        browser.get(f"http://localhost:{site.server_address[1]}/")
        status, _ = browser.execute_async_script(ATTACK, f"http://127.0.0.1:{port}/api/label", name)
        assert status == 0  # an opaque answer: the request went, and was refused for its Origin
        assert sidecar(folder, 0)["label"] is None
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
        browser.find_elements(By.CSS_SELECTOR, ".card")[0].find_element(
            By.CSS_SELECTOR, "button[data-label='paper']"
        ).click()  # the page itself still labels
        wait_for(lambda: sidecar(folder, 0)["label"] == "paper", what="the page's own label")
    finally:
        browser.quit()
        site.shutdown()
        site.server_close()
    assert sidecar(folder, 0)["label"] == "paper"


@needs_chromium
def test_markup_from_a_bin_a_sidecar_or_a_label_is_shown_as_text(folder, server):
    """Markup in a guess, the bin, why it was kept, its label and bin, and a file's name: shown as
    text, no element made, no script run; a NaN sidecar beside them does not stop the page."""
    from selenium.webdriver.common.by import By

    write_pair(folder, "markup", ("paper",))
    (folder / "markup.json").write_text(
        json.dumps(
            {
                "probabilities": {MARKUP: 0.7, "paper": 0.2},
                "bin": "<i id=pwn-bin>x</i>",
                "kept": "<script>window.pwned=2</script>",
                "label": "<b id=pwn-label>l</b>",
                "label_bin": "<u id=pwn-label-bin>b</u>",
            }
        )
    )
    write_pair(folder, "nan", ("paper",))
    (folder / "nan.json").write_text('{"probabilities": {"paper": NaN}}')
    hostile = folder / "<b id=pwn-file>f<b>.jpg"
    hostile.write_bytes((folder / "markup.jpg").read_bytes())
    hostile.with_suffix(".json").write_text((folder / "markup.json").read_text())
    browser = headless_chromium()
    try:
        browser.get(server + "/")
        wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
        made = browser.execute_script(
            "return [document.querySelectorAll('[id^=pwn], img[src=x], b, i, u').length,"
            " document.scripts.length, window.pwned === undefined]"
        )
        assert made == [0, 1, True]
        card = browser.find_element(By.CSS_SELECTOR, ".card[data-name='markup']").text
        assert MARKUP in card and "<i id=pwn-bin>x</i>" in card and "<script>window.pwned=2</script>" in card
        assert "✓ <b id=pwn-label>l</b> → <u id=pwn-label-bin>b</u>" in card
        problems = browser.find_element(By.ID, "problems").text
        assert (
            "<b id=pwn-file>f<b>.jpg: not a frame's name" in problems and "nan.json: unreadable" in problems
        )
        assert browser.find_element(By.ID, "progress").text == "1 / 4 labelled"
    finally:
        browser.quit()


def test_smartbin_review_starts_past_hostile_sidecars_on_this_machine_only(folder, tmp_path):
    """The real command: a FIFO, a sidecar nested 100,000 deep and a NaN one are each named in a line
    and left out; it says it serves on 127.0.0.1 only, and it does."""
    write_pair(folder, "fifo", ("paper",))
    (folder / "fifo.json").unlink()
    os.mkfifo(folder / "fifo.json")
    write_pair(folder, "deep", ("paper",))
    (folder / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    write_pair(folder, "nan", ("paper",))
    (folder / "nan.json").write_text('{"probabilities": {"paper": NaN}}')
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "review", str(folder), "--no-browser", "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    said: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("serving on") for line in said):
            assert process.poll() is None, "".join(said) + "".join(list(lines.queue))
            assert time.monotonic() < deadline, "no 'serving on' line in 60 s:\n" + "".join(said)
            with contextlib.suppress(queue.Empty):
                said.append(lines.get(timeout=0.5))
        text = "".join(said)
        assert "3 frames in" in text, text
        for name in ("fifo.json: unreadable: not a regular file", "deep.json: unreadable", "nan.json"):
            assert f"not shown: {name}" in text, text
        serving = next(line for line in said if line.startswith("serving on"))
        assert (
            serving.startswith("serving on 127.0.0.1 port ") and "reachable only from this machine" in serving
        )
        port = int(serving.split(" port ")[1].split(":")[0])
        status, body = get(f"http://127.0.0.1:{port}/api/items")
        assert status == 200 and len(strict(body)["items"]) == 3
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    assert code == 0  # Ctrl-C stops it cleanly


def test_which_names_a_server_answers_to():
    from edge.service.web import allowed_names, host_refusal, origin_refusal

    local = allowed_names("127.0.0.1", "127.0.0.1")
    for host in ("127.0.0.1:8765", "localhost", "LocalHost:1", "[::1]:8765"):
        assert host_refusal(host, local, any_ip=False) is None, host
    for host in ("192.0.2.7:8765", "evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "", None):
        assert "DNS rebinding" in host_refusal(host, local, any_ip=False), host
    shared = allowed_names("0.0.0.0", "0.0.0.0")
    assert host_refusal("192.0.2.7:8765", shared, any_ip=True) is None
    assert host_refusal(f"{socket.gethostname()}:8765", shared, any_ip=True) is None
    assert "DNS rebinding" in host_refusal("evil.example:8765", shared, any_ip=True)
    named = allowed_names("bench-pc.lan", "192.0.2.7")
    assert host_refusal("bench-pc.lan:8765", named, False) is None
    assert host_refusal("192.0.2.7", named, False) is None
    assert origin_refusal(None, "localhost:1") is None
    assert origin_refusal("http://localhost:1", "localhost:1") is None
    assert "only this server's own page" in origin_refusal("http://localhost:2", "localhost:1")
