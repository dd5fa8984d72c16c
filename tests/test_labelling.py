"""`smartbin review DIR`: the labelling page over a real HTTP server, and in a real headless Chromium."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.model.taxonomy import load_taxonomy
from edge.service.labelling import ReviewFolder, make_server
from tests.broker import wait_for
from tests.browser import headless_chromium, needs_chromium
from tests.conftest import REPO

TAXONOMY = load_taxonomy(REPO / "config" / "taxonomy" / "cn-4bin.yaml")
GUESSES = [("battery", "paper", "glassware"), ("paper", "cardboard", "trash"), ("shoes", "clothes", "trash")]


def write_pair(folder: Path, name: str, top: tuple[str, ...]) -> None:
    image = np.full((120, 160, 3), 90, np.uint8)
    cv2.putText(image, name[-3:], (20, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
    cv2.imwrite(str(folder / f"{name}.jpg"), image)
    probabilities = {label: round(0.6 / (k + 1), 4) for k, label in enumerate(top)}
    sidecar = {"id": name, "item": top[0], "bin": TAXONOMY.bin_of(top[0]), "kept": "uncertain"}
    (folder / f"{name}.json").write_text(
        json.dumps({**sidecar, "probabilities": probabilities, "label": None})
    )


@pytest.fixture()
def folder(tmp_path) -> Path:
    folder = tmp_path / "review"
    folder.mkdir()
    for n, top in enumerate(GUESSES):
        write_pair(folder, f"20261125-0100{n:02d}.000001-item{n}", top)
    return folder


@pytest.fixture()
def server(folder):
    server = make_server(ReviewFolder(folder, TAXONOMY), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def label(server: str, **request) -> tuple[int, dict]:
    return post(f"{server}/api/label", json.dumps(request).encode())


def sidecar(folder: Path, n: int) -> dict:
    return json.loads(next(folder.glob(f"*item{n}.json")).read_text())


def test_the_page_lists_whole_pairs_and_names_the_rest(folder, server):
    (folder / "20261125-020000.000001-nojson.jpg").write_bytes(b"\xff\xd8")
    (folder / "20261125-020001.000001-broken.jpg").write_bytes(b"\xff\xd8")
    (folder / "20261125-020001.000001-broken.json").write_text("{not json")
    status, body = get(f"{server}/api/items")
    catalogue = json.loads(body)
    assert status == 200 and [i["name"][-5:] for i in catalogue["items"]] == ["item0", "item1", "item2"]
    assert catalogue["items"][0]["top"][0] == ["battery", 0.6] and catalogue["items"][0]["bin"] == "hazardous"
    problems = " ".join(catalogue["problems"])
    assert "nojson.jpg: no JSON beside it" in problems and "broken.json: unreadable" in problems
    assert catalogue["labels"]["battery"] == "hazardous" and catalogue["bins"] == TAXONOMY.bin_ids
    status, page = get(f"{server}/")
    assert status == 200 and b"smartbin review" in page


def test_labels_are_written_into_the_json_and_bad_ones_refused(folder, server):
    name = next(folder.glob("*item0.json")).stem
    assert label(server, name=name, label="paper") == (
        200,
        {"name": name, "label": "paper", "label_bin": "recyclable"},
    )
    assert sidecar(folder, 0)["label"] == "paper" and sidecar(folder, 0)["label_bin"] == "recyclable"
    assert sidecar(folder, 0)["probabilities"]["battery"] == 0.6  # the rest of the sidecar is kept
    assert label(server, name=name, label="empty")[1]["label_bin"] is None
    status, answer = label(server, name=name, label="takeaway-cup")
    assert status == 400 and "new item: say which bin" in answer["error"]
    assert label(server, name=name, label="takeaway-cup", bin="other")[1]["label_bin"] == "other"
    assert sidecar(folder, 0)["label"] == "takeaway-cup"
    assert label(server, name=name, label="Not A Label!")[0] == 400
    assert label(server, name="../../etc/passwd", label="paper")[0] == 400
    assert post(f"{server}/api/label", b"[1, 2]")[0] == 400
    assert post(f"{server}/api/label", b"{nope")[0] == 400
    assert not list(folder.glob("*.tmp"))


def test_only_this_folders_photos_are_served(folder, server, tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"PRIVATE-CONTENT")
    name = next(folder.glob("*item1.jpg")).name
    assert get(f"{server}/photo/{name}")[1][:2] == b"\xff\xd8"
    for path in ("/photo/../secret.jpg", "/photo/%2e%2e/secret.jpg", "/photo/..%2fsecret.jpg", "/etc/passwd"):
        status, body = get(server + path)
        assert status == 404 and b"PRIVATE-CONTENT" not in body


def test_two_technicians_labelling_one_photo_never_damage_it(folder, server):
    name = next(folder.glob("*item2.json")).stem

    def technician(word: str) -> None:
        for _ in range(40):
            assert label(server, name=name, label=word)[0] == 200

    threads = [threading.Thread(target=technician, args=(word,)) for word in ("shoes", "clothes")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sidecar(folder, 2)["label"] in ("shoes", "clothes")  # the last write wins; the file is whole


def test_a_missing_folder_is_a_clear_error(tmp_path):
    from edge.errors import SmartbinError

    with pytest.raises(SmartbinError, match="does not exist") as err:
        make_server(ReviewFolder(tmp_path / "nowhere", TAXONOMY), port=0)
    assert "--pull-review" in err.value.fix


@needs_chromium
def test_labelling_in_a_real_browser_by_click_and_by_key(folder, server):
    from selenium.webdriver.common.by import By

    browser = headless_chromium()
    try:
        browser.get(server + "/")
        wait_for(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "yes")
        assert browser.find_element(By.ID, "progress").text == "0 / 3 labelled"
        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        cards[0].find_element(By.CSS_SELECTOR, "button[data-label='paper']").click()  # its second guess
        wait_for(lambda: sidecar(folder, 0)["label"] == "paper", what="the click's label in the JSON")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("j")  # to the second photo
        body.send_keys("1")  # its first guess, and on to the third
        wait_for(lambda: sidecar(folder, 1)["label"] == "paper", what="the key's label in the JSON")
        body.send_keys("n")  # the third is not an item
        wait_for(lambda: sidecar(folder, 2)["label"] == "empty", what="not an item in the JSON")
        wait_for(lambda: browser.find_element(By.ID, "progress").text == "3 / 3 labelled")
        assert "✓ paper → recyclable" in cards[0].text and "✓ not an item" in cards[2].text
        cards[1].find_element(By.CSS_SELECTOR, ".other input").send_keys("takeaway-cup")
        cards[1].find_element(By.CSS_SELECTOR, ".other button").click()
        wait_for(lambda: "new item" in cards[1].find_element(By.CSS_SELECTOR, ".error").text)
        assert sidecar(folder, 1)["label"] == "paper"  # refused: nothing written
    finally:
        browser.quit()
