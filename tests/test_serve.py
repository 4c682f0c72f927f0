"""fer-serve through a real HTTP client against a real server (uvicorn on a free localhost port): /analyze gives the
API's records, and every limit answers with its one status, one line of JSON and no traceback; nothing is written."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.scripts.serve_load import running_server
from fer_runtime import FaceExpressionRecognizer
from fer_runtime.cli import DEMO_IMAGE
from fer_runtime.data import MAX_IMAGE_PIXELS

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "cwd"
    folder.mkdir()
    with running_server(["--workers", "1", "--queue", "0", "--max-bytes", str(MAX_BYTES)], folder) as srv:
        srv.folder = folder
        yield srv


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG that says it is width x height (no pixels follow)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_health_names_the_model_its_classes_and_provider(server):
    status, _, body = server.request("GET", "/health")
    fer = FaceExpressionRecognizer()
    assert status == 200 and body["model"] == "ferplus" and body["classes"] == fer.classes
    assert body["provider"] == "cpu" and body["limits"] == {"max_bytes": MAX_BYTES, "max_pixels": MAX_IMAGE_PIXELS,
                                                             "workers": 1, "queue": 0}


@pytest.mark.parametrize("query, prior, crops", [("", "model", False), ("?prior=balanced", "balanced", False),
                                                 ("?prior=train&crops=true", "train", True)])
def test_analyze_gives_the_records_the_api_gives(server, query, prior, crops):
    photo = cv2.imread(str(DEMO_IMAGE))
    mirror = np.ascontiguousarray(photo[:, ::-1])
    fer = FaceExpressionRecognizer(prior=prior)
    for body, image in ((DEMO_IMAGE.read_bytes(), photo), (_png(mirror), mirror)):
        status, headers, records = server.request("POST", f"/analyze{query}", body, {"Content-Type": "image/jpeg"})
        assert status == 200, records
        assert records == fer.analyze(image, crops=crops) and records


def test_analyze_of_a_photo_without_faces_is_an_empty_list(server):
    assert server.request("POST", "/analyze", _png(np.full((120, 160, 3), 90, np.uint8)))[::2] == (200, [])


def _limit_cases() -> list:
    photo = cv2.imread(str(DEMO_IMAGE))
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    return [
        ("a body over --max-bytes", b"\x89PNG" + bytes(MAX_BYTES), {}, 413, "over 300000 bytes"),
        ("a PNG over the pixel limit", _png_header(side, side), {}, 413, "megapixels"),
        ("text", b"hello, this is not a photo", {"Content-Type": "text/plain"}, 415, "not an image"),
        ("an empty body", b"", {}, 415, "empty"),
        ("a damaged JPEG", DEMO_IMAGE.read_bytes()[:600], {}, 415, "not an image OpenCV can decode"),
        ("a form", _png(photo), {"Content-Type": "multipart/form-data; boundary=x"}, 415, "not a form"),
        ("a GIF", b"GIF89a" + struct.pack("<HH", 64, 64) + bytes(60), {}, 415, "not an image fer-serve reads"),
        ("a TIFF", b"II*\x00" + struct.pack("<I", 8) + bytes(60), {}, 415, "not an image fer-serve reads"),
    ]


@pytest.mark.parametrize("what, body, headers, status, message", _limit_cases(), ids=[c[0] for c in _limit_cases()])
def test_each_limit_has_its_status_and_one_line(server, what, body, headers, status, message):
    got, _, answer = server.request("POST", "/analyze", body, headers)
    assert got == status and message in answer["error"] and "\n" not in answer["error"], answer


def test_a_jpeg_with_metadata_before_its_pixels_is_read(server):
    """A phone's JPEG can carry hundreds of KB (a depth map) before its frame header."""
    jpeg = cv2.imencode(".jpg", cv2.imread(str(DEMO_IMAGE)))[1].tobytes()
    app9 = b"\xff\xe9" + struct.pack(">H", 65535) + bytes(65533)
    body = jpeg[:2] + app9 * 4 + jpeg[2:]  # the frame header past the first 256 KiB
    assert len(body) < MAX_BYTES
    got, _, answer = server.request("POST", "/analyze", body)
    plain = server.request("POST", "/analyze", jpeg)[2]
    assert got == 200 and answer == plain and answer, answer


def test_a_body_streamed_past_the_limit_is_cut_at_413(server):
    """No Content-Length (chunked): the limit is counted as the bytes arrive."""
    chunks = (b"\xff\xd8" + bytes(100_000) for _ in range(5))
    assert server.request("POST", "/analyze", chunks)[0] == 413  # http.client sends an iterable chunked


@pytest.mark.parametrize("query, message", [("?prior=calibrated", "prior must be one of"),
                                            ("?crops=maybe", "crops must be true or false"), ("?box=1", "unknown parameter")])
def test_bad_parameters_are_400(server, query, message):
    status, _, answer = server.request("POST", f"/analyze{query}", DEMO_IMAGE.read_bytes())
    assert status == 400 and message in answer["error"]


def test_past_the_concurrency_limit_a_request_gets_503_with_retry_after(server):
    """One worker, no queue: a request that holds the one slot (its body not sent yet) makes the next one 503."""
    holder = socket.create_connection((server.host, server.port))
    holder.sendall(b"POST /analyze HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    try:
        status, headers = 0, {}
        for _ in range(50):  # until the server has read the holder's headers
            status, headers, answer = server.request("POST", "/analyze", DEMO_IMAGE.read_bytes())
            if status == 503:
                break
            time.sleep(0.1)
        assert status == 503 and headers.get("retry-after") == "1" and "busy" in answer["error"]
    finally:
        holder.close()
    for _ in range(50):  # the slot is free again once the server sees the holder gone
        if server.request("POST", "/analyze", DEMO_IMAGE.read_bytes())[0] == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the slot was not given back")


def test_the_page_and_its_script_come_from_fer_serve_alone(server):
    status, headers, page = server.request("GET", "/")
    assert status == 200 and "text/html" in headers["content-type"]
    assert "default-src 'self'" in headers["content-security-policy"]
    _, _, script = server.request("GET", "/page.js")
    for text in (page, script):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    # every file the page loads or calls is a path on fer-serve itself, and answers
    targets = re.findall(r"""(?:src|href)=["']([^"']+)""", page) + re.findall(r"""fetch\(["']([^"']+)""", script)
    assert sorted(set(targets)) == ["/analyze", "/health", "/page.js"]
    assert server.request("GET", "/page.js")[0] == 200 and server.request("GET", "/health")[0] == 200
    assert '<script src="/page.js">' in page and "fetch(\"/analyze\"" in script and "getUserMedia" in script


def test_no_traceback_and_nothing_written(server):
    """After every request above (run last in this file): the log has the start line only, and the server's working
    and temporary folder is empty."""
    server.request("POST", "/analyze", b"junk")
    log = server.log.read_text()
    assert "Traceback" not in log and log.startswith("fer-serve: http://127.0.0.1:"), log
    assert list(server.folder.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "70000 is not in the range"),
    (["--workers", "0"], "0 is not in the range"),
    (["--model", "missing.onnx"], "model file not found"),
    (["--detector", "yunet"], "--detector yunet needs --detector-model"),
    (["--host", "192.0.2.1"], "cannot listen on 192.0.2.1:8000"),  # a documentation address: not this machine
])
def test_bad_options_are_one_line_and_a_nonzero_exit(args, message):
    from fer_runtime.serve.cli import main

    result = CliRunner().invoke(main, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fer-serve: error:") and message in lines[0]


def test_a_port_in_use_is_one_line():
    from fer_runtime.serve.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(main, ["--port", str(taken.getsockname()[1])])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output and len(result.output.splitlines()) == 1


def test_health_is_json_the_page_reads(server):
    _, _, body = server.request("GET", "/health")
    assert json.loads(json.dumps(body)) == body and set(body["priors"]) == {"model", "train", "balanced"}


def test_a_short_load_has_no_errors_and_flat_memory(tmp_path):
    """4 clients for 4 s (benchmarks/scripts/serve_load.py is the long run): every request answered 200 with the records
    of its photo made alone, and the server's memory grows by less than 40 MB (a 1280x960 image left behind per request
    would be 3.7 MB each)."""
    from benchmarks.scripts.serve_load import SERVER_ARGS, run_load

    folder = tmp_path / "cwd"
    folder.mkdir()
    with running_server(SERVER_ARGS, folder) as srv:
        result = run_load(srv, clients=4, seconds=4)
    assert result["errors"] == 0 and result["ok"] >= 4, result
    assert result["rss_end_mb"] - result["rss_start_mb"] < 40, result
