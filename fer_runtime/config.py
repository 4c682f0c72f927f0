"""``RunConfig``: every fer-run option, its default, range and help, declared once (the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass

from fer_runtime.decision import PRIOR_CHOICES
from fer_runtime.detect import DEFAULT_DETECT_WIDTH
from fer_runtime.engine import DEFAULT_DETECT_EVERY, DEFAULT_DETECT_PERIOD, DEFAULT_THREADS
from fer_runtime.options import MAX_THREADS, option
from fer_runtime.providers import PROVIDER_HELP
from fer_runtime.sources import DEFAULT_RECONNECT_S


@dataclass
class RunConfig:
    # what to read
    camera: int | None = option(None, "camera index (e.g. 0)", metavar="N", bounds=(0, None),
                                none_means="0, else the bundled photo")
    source: str | None = option(None, "video file, image, folder of images, or stream URL", metavar="PATH|URL")
    reconnect: float = option(DEFAULT_RECONNECT_S, "a camera or stream that drops is reopened for this many seconds "
                              "(inf: for ever) before the run ends", metavar="SECONDS", bounds=(0, None))
    model: str | None = option(None, "shipped model (ferplus, fer2013) or a model file: .onnx, OpenVINO .xml, .tflite",
                               metavar="NAME|FILE", none_means="ferplus")
    # faces
    detector: str = option("haar", "face detector: OpenCV's Haar cascade (offline) or YuNet", choices=["haar", "yunet"])
    detector_model: str | None = option(None, "YuNet .onnx file for --detector yunet", metavar="FILE")
    detect_width: int = option(DEFAULT_DETECT_WIDTH, "video and cameras: detect on a copy of the frame this wide (photos: "
                               "640 at least)", bounds=(32, None))
    detect_every: int = option(DEFAULT_DETECT_EVERY, "full detection k frames after the last one came back, and no sooner "
                               "than twice as long as it took (on the frame: every k-th frame), and at once when a face "
                               "is lost; faces are followed in between (1: detect on every frame)", bounds=(1, None))
    detect_period: float = option(DEFAULT_DETECT_PERIOD, "background detection also runs again this many seconds after "
                                  "the last came back, when that is sooner than --detect-every frames (0: frames only; "
                                  "0.03 at a camera's 30 FPS: every other frame, about twice the CPU)",
                                  metavar="SECONDS", bounds=(0, None))
    background_detection: bool = option(True, "video and cameras: full detection on a thread of its own, its faces "
                                        "adopted when it finishes, so that no frame waits for it (off: on the frame)")
    smoothing: float = option(0.7, "EMA weight of past probabilities (0 off)", bounds=(0, 1, "<"))
    # the model
    threads: int = option(DEFAULT_THREADS, "ONNX Runtime threads (0: all cores); more than 1 takes CPU from decoding and "
                          "detection", bounds=(0, MAX_THREADS))
    prior: str = option("model", "decision rule: the model's own (fitted on validation), the training prior (the raw "
                        "argmax), or a balanced prior (every expression equally likely: posed faces, balanced sets)",
                        choices=PRIOR_CHOICES)
    provider: str = option("auto", PROVIDER_HELP)
    # what to show and write
    display: bool | None = option(None, "show a window", none_means="when a display exists")
    crops: bool = option(False, "the images are face crops already (e.g. FER2013's 48x48): no detection")
    demo: bool = option(False, "run on the bundled photo (what fer-run does when there is no camera)")
    save: str | None = option(None, "annotated output: out.mp4 for video or a camera, out.png for an image, a folder for "
                              "a folder of images", metavar="PATH")
    json: str | None = option(None, "write one JSON record per frame (JSONL)", metavar="FILE")
    overwrite: bool = option(False, "replace a --json or --save output that exists (else refused)")
    max_frames: int | None = option(None, "stop after this many frames", bounds=(1, None), none_means="all")
    profile: bool = option(False, "print per-stage latency p50/p95 and FPS at the end")
