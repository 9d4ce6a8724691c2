"""``fcnseg serve`` (issue 29): a model behind HTTP, answering as ``fcnseg predict`` writes.

Servers run in this process on a thread (uvicorn on a socket of our own), except where
the test is about the process: the command line, its banner and SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import Segmenter
from fcnseg.models.backbones import BACKBONES
from fcnseg.serving import Batcher, Closed, Service, create_app, server

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from slim_models import TINY, TinyVGG, raw_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO = "fcn8s_efficientnet_lite0.camvid"
CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
FRAME = CAMVID / "val" / "0016E5_07959.png"


# ---------------------------------------------------------------------------------------------
# The batcher: one model thread, batches of one size


def test_batcher_batches_one_size_and_a_failure_fails_only_its_item():
    release, batches = threading.Event(), []

    def run(items):
        release.wait(5)
        batches.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    batcher = Batcher(run, max_batch=3, max_wait=0.05)
    blocker = batcher.submit("first", "x")  # holds the model thread while the rest queue
    time.sleep(0.05)
    items = [("a", "p"), ("b", "q"), ("a", "r"), ("a", "bad"), ("a", "s"), ("b", "t")]
    futures = [batcher.submit(key, item) for key, item in items]
    release.set()
    assert blocker.result(5) == "X"
    assert [f.result(5) for i, f in enumerate(futures) if i != 3] == ["P", "Q", "R", "S", "T"]
    with pytest.raises(ValueError, match="bad item"):
        futures[3].result(5)
    batcher.close()
    # the oldest item's size first, up to three of it; the failed batch retried item by item
    assert batches[1] == ["p", "r", "bad"]
    assert ["p"] in batches and ["r"] in batches and ["bad"] in batches
    assert ["q", "t"] in batches and ["s"] in batches


def test_batcher_close_answers_what_waits_then_refuses():
    batcher = Batcher(lambda items: [i * 2 for i in items], max_batch=4, max_wait=0.2)
    futures = [batcher.submit("k", i) for i in range(3)]
    batcher.close()
    assert [f.result(1) for f in futures] == [0, 2, 4]
    with pytest.raises(Closed, match="shutting down"):
        batcher.submit("k", 1)


# ---------------------------------------------------------------------------------------------
# A server on a thread


@contextlib.contextmanager
def serving(service: Service, **app_options):
    """``service`` behind HTTP on a free port of 127.0.0.1: its base URL."""
    import uvicorn

    sock = server.bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(service, **app_options), log_level="error", lifespan="on")
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        http.should_exit = True
        thread.join(30)
        sock.close()


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.headers["content-type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, dict]:
    boundary = "fcnseg-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zoo_server():
    """The zoo's CamVid FCN-8s served with limits a test can reach: 360 x 480 pixels, 1 MB."""
    if not FRAME.is_file():
        pytest.skip(f"needs the CamVid frame {FRAME}")
    torch.set_num_threads(1)
    segmenter = Segmenter.from_pretrained(ZOO)
    service = Service(segmenter, name=ZOO, max_pixels=360 * 480, max_wait_ms=1)
    with serving(service, max_bytes=1_000_000) as url:
        yield url, service


def test_the_mask_is_the_png_predict_writes(zoo_server, fcnseg_main, tmp_path):
    url, _ = zoo_server
    data = FRAME.read_bytes()
    status, media, mask = post(url + "/v1/segment", data, {"Content-Type": "image/png"})
    assert (status, media) == (200, "image/png")
    result = fcnseg_main("predict", "--pretrained", ZOO, str(FRAME), "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert mask == (tmp_path / f"{FRAME.stem}.png").read_bytes()
    status, media, overlay = post(url + "/v1/segment?overlay=1", data, {"Content-Type": "image/png"})  # fmt: skip
    assert (status, media) == (200, "image/png")
    assert overlay == (tmp_path / f"{FRAME.stem}_overlay.png").read_bytes()
    body, headers = multipart("image", "frame.png", data, "image/png")
    assert post(url + "/v1/segment", body, headers) == (200, "image/png", mask)


def test_the_json_answer_counts_every_pixel(zoo_server):
    url, service = zoo_server
    headers = {"Content-Type": "image/png", "Accept": "application/json"}
    status, media, body = post(url + "/v1/segment?overlay=1", FRAME.read_bytes(), headers)
    assert (status, media) == (200, "application/json")
    answer = json.loads(body)
    assert answer["classes"] == list(service.segmenter.classes)
    assert (answer["width"], answer["height"]) == (480, 360)
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
    assert np.array_equal(labels, service.segmenter.predict(str(FRAME)))
    assert answer["pixels"] == np.bincount(labels.ravel(), minlength=11).tolist()
    assert Image.open(io.BytesIO(base64.b64decode(answer["overlay"]))).width == 480
    assert len(answer["colors"]) == 11


def test_bad_requests_are_one_sentence_and_the_next_is_served(zoo_server):
    url, _ = zoo_server
    frame = FRAME.read_bytes()
    png = {"Content-Type": "image/png"}
    big = _png(np.zeros((361, 480, 3), np.uint8))  # one row over the test server's limit
    no_field = multipart("photo", "frame.png", frame, "image/png")
    cases = [
        ("garbage", url + "/v1/segment", b"\x00garbage", png, 400, "not an image"),
        ("empty", url + "/v1/segment", b"", png, 400, "the body is empty"),
        (
            "wrong type",
            url + "/v1/segment",
            frame,
            {"Content-Type": "text/plain"},
            415,
            "text/plain",
        ),  # fmt: skip
        ("truncated", url + "/v1/segment", frame[: len(frame) // 2], png, 400, "cut short"),
        ("pixels", url + "/v1/segment", big, png, 413, "--max-pixels"),
        ("field", url + "/v1/segment", *no_field, 400, "found: photo"),
        ("task", url + "/v1/segment?task=depth", frame, png, 400, "ask for semantic"),
        ("flag", url + "/v1/segment?overlay=maybe", frame, png, 400, "not 1 or 0"),
    ]
    for name, where, body, headers, code, words in cases:
        status, media, answer = post(where, body, headers)
        assert (status, media) == (code, "application/json"), name
        message = json.loads(answer)["error"]
        assert words in message and "\n" not in message, (name, message)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:  # refused before its body
        client.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000001\r\n\r\n"
        )
        answer = client.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 413") and b"--max-bytes" in answer
    status, media, answer = get(url + "/nope")
    assert status == 404 and "POST /v1/segment" in json.loads(answer)["error"]
    assert post(url + "/v1/segment", frame, png)[0] == 200
    metrics = get(url + "/metrics")[2].decode()
    for reason in ("not_an_image", "empty", "wrong_type", "undecodable", "too_many_pixels"):
        assert f'fcnseg_errors_total{{reason="{reason}"}} 1' in metrics, reason
    assert 'fcnseg_errors_total{reason="body_too_large"} 1' in metrics


def test_a_client_gone_mid_upload_leaves_the_server_serving(zoo_server):
    url, _ = zoo_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as client:
        client.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 500000\r\n\r\n" + FRAME.read_bytes()[:1000]
        )
    deadline = time.monotonic() + 10
    while 'reason="client_disconnected"' not in get(url + "/metrics")[2].decode():
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.05)
    assert post(url + "/v1/segment", FRAME.read_bytes(), {"Content-Type": "image/png"})[0] == 200


def test_health_metrics_and_the_page(zoo_server):
    url, _ = zoo_server
    status, _, body = get(url + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["model"] == ZOO and health["engine"] == "torch"
    assert health["max_batch"] == 1  # on a CPU batches ran slower per image than single ones
    assert health["tasks"]["semantic"][0] == "Sky"
    status, media, body = get(url + "/metrics")
    assert status == 200 and media.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE fcnseg_request_seconds histogram" in text
    assert 'fcnseg_batch_size_bucket{le="+Inf"}' in text
    status, media, body = get(url + "/")
    assert status == 200 and media.startswith("text/html")
    assert b'type="file"' in body and b"v1/segment" in body and b"://" not in body  # no CDN


@pytest.fixture
def tiny_backbone():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, TINY, TinyVGG)
        yield


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_concurrent_requests_batch_and_each_gets_its_own_mask(engine, tiny_backbone, tiny_vgg_file):
    """Sixteen clients at once, images of two sizes: every answer is its own image's map,
    and requests of one size ran together."""
    if engine != "torch":
        pytest.importorskip("onnxscript")
        pytest.importorskip(engine)
    segmenter = Segmenter.from_checkpoint(tiny_vgg_file(), engine=engine)
    arrays = [
        raw_images(segmenter.spec, *((48, 64) if seed % 2 else (40, 40)), seed)["image"]
        for seed in range(8)
    ]
    expected = [segmenter.predict(array) for array in arrays]
    service = Service(segmenter, name="tiny", max_batch=4, max_wait_ms=50)
    with serving(service) as url:

        def ask(index: int) -> np.ndarray:
            status, _, body = post(url + "/v1/segment", _png(arrays[index]), {"Content-Type": "image/png"})  # fmt: skip
            assert status == 200
            return np.asarray(Image.open(io.BytesIO(body)))

        order = [index % 8 for index in range(32)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, order))
        metrics = get(url + "/metrics")[2].decode()
    for index, labels in zip(order, answers, strict=True):
        assert np.array_equal(labels, expected[index]), index
    assert 'fcnseg_batch_size_bucket{le="1"}' in metrics
    ones = int(metrics.split('fcnseg_batch_size_bucket{le="1"} ')[1].split()[0])
    total = int(metrics.split("fcnseg_batch_size_count ")[1].split()[0])
    assert ones < total, "no two requests ran together"


# ---------------------------------------------------------------------------------------------
# The command line


def _start(fcnseg_args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fcnseg", "serve", *fcnseg_args, "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    banner = process.stdout.readline()
    assert banner.startswith("serving "), banner + process.stderr.read()
    return process, banner.split(" on ")[1].split()[0].rstrip("/")


def test_serve_answers_and_sigterm_finishes_the_request_in_flight(
    make_checkpoint, tmp_path, cli_environment
):
    checkpoint = make_checkpoint(tmp_path / "model.pt", ["sky", "road", "car"])
    process, url = _start(
        ["--checkpoint", str(checkpoint), "--max-wait-ms", "1500"], cli_environment
    )
    try:
        health = json.loads(get(url + "/healthz")[2])
        assert health["tasks"] == {"semantic": ["sky", "road", "car"]}
        image = _png(np.full((64, 80, 3), 90, np.uint8))
        with ThreadPoolExecutor(1) as pool:  # the model waits 1.5 s for company
            answer = pool.submit(post, url + "/v1/segment", image, {"Content-Type": "image/png"})  # fmt: skip
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            status, media, body = answer.result(30)
        assert (status, media) == (200, "image/png")
        assert Image.open(io.BytesIO(body)).size == (80, 64)
        assert process.wait(30) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        process.kill()
        process.wait()


def test_serve_errors_are_one_line(fcnseg_main, one_line_error, tmp_path, make_checkpoint):
    result = fcnseg_main("serve", "--pretrained", "fcn8s_efficientnet_lite9.camvid")
    assert result.returncode != 0 and "fcn8s_efficientnet_lite0.camvid" in one_line_error(result)
    checkpoint = make_checkpoint(tmp_path / "model.pt", ["a", "b"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = fcnseg_main("serve", "--checkpoint", checkpoint, "--port", port)
    assert result.returncode != 0 and "choose another --port" in one_line_error(result)


# ---------------------------------------------------------------------------------------------
# The page, in a real browser (Chromium and its driver from the distribution's packages)


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)  # fmt: skip
    driver = "/usr/bin/chromedriver"
    if chromium is None or not os.path.exists(driver):
        pytest.skip("needs Chromium and chromedriver (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


def test_the_page_shows_the_overlay_and_the_shares_in_a_browser(zoo_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = zoo_server
    browser = _browser()
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: ZOO in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(FRAME))
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.ID, "overlay").get_attribute("naturalWidth") == "480"
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.class-row")
        names = [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]
        shares = [float(row.find_elements(By.TAG_NAME, "td")[2].text.split()[0]) for row in rows]
        assert {"Road", "Building", "Sky"} <= set(names)
        assert abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)
        assert "480x360" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "file").send_keys(str(Path(__file__)))  # not an image
        WebDriverWait(browser, 30).until(
            lambda b: "not an image" in b.find_element(By.ID, "status").text
        )
    finally:
        browser.quit()


def test_the_listening_socket_says_tcp_so_replies_are_not_held_back():
    """asyncio turns Nagle's algorithm off only on sockets that name TCP as their protocol;
    on one that did not, every keep-alive request waited 40 ms more for a delayed ACK."""
    with server.bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP and sock.type == socket.SOCK_STREAM
