"""fer-serve's webcam page in a real browser: headless Chromium (Debian's chromium and chromium-driver; .ci/run installs
them) with a fake camera playing a clip of a face. The page must list the face with the API's label and a box where
the face is, and draw it over the video. Skips where Chromium or chromedriver is not installed."""

from __future__ import annotations

import pytest

from benchmarks.scripts.serve_page import (
    FACE_AT,
    browser_paths,
    browser_session,
    clip_frame,
    page_with_faces,
    screenshot,
    write_y4m,
)
from fer_runtime import FaceExpressionRecognizer
from fer_runtime.track import iou

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(browser_paths() is None, reason="needs chromium and chromedriver "
                                                                "(apt-get install chromium chromium-driver)")


def test_the_page_draws_the_label_of_the_face_the_camera_sees(tmp_path):
    from benchmarks.scripts.serve_load import running_server

    frame = clip_frame()
    expected = FaceExpressionRecognizer().analyze(frame)
    assert len(expected) == 1 and expected[0]["box"][0] > FACE_AT[0]
    clip = write_y4m(tmp_path / "clip.y4m", frame)
    folder = tmp_path / "cwd"
    folder.mkdir()
    with running_server([], folder) as server, browser_session(clip, tmp_path / "profile") as (base, session):
        shown = page_with_faces(base, session, f"http://{server.host}:{server.port}/")
        png = screenshot(base, session, tmp_path / "page.png")
    assert shown["video"] == [640, 480], shown
    assert len(shown["faces"]) == 1, shown
    face = shown["faces"][0]
    # the browser's frame went through YUV 4:2:0 and JPEG: the same face, a box a few pixels off
    assert face["label"] == expected[0]["dominant_emotion"] and face["text"].startswith(f"{face['label']} ")
    assert 0 < face["confidence"] <= 1 and f"{round(100 * face['confidence'])}%" in face["text"]
    assert iou(tuple(face["box"]), tuple(expected[0]["box"])) > 0.5, (face, expected)
    assert shown["drawn"] > 500, "the box and label are drawn on the overlay"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
