"""``ServeConfig``: every fer-serve option, its default, range and help, declared once (the command line is built
from it)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fer_runtime.decision import PRIOR_CHOICES
from fer_runtime.detect import DEFAULT_DETECT_WIDTH
from fer_runtime.options import option
from fer_runtime.providers import PROVIDER_HELP

# a photo's bytes: a 50-megapixel JPEG (fer-run's pixel limit, MAX_IMAGE_PIXELS) is about 15 to 25 MB
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every network interface; the page's camera needs "
                       "https or localhost in the browser)", metavar="ADDRESS")
    port: int = option(8000, "port to listen on (0: any free port, printed at start)", bounds=(0, 65535))
    model: str | None = option(None, "shipped model (ferplus, fer2013) or an ONNX file", metavar="NAME|FILE",
                               none_means="ferplus")
    detector: str = option("haar", "face detector: OpenCV's Haar cascade (offline) or YuNet", choices=["haar", "yunet"])
    detector_model: str | None = option(None, "YuNet .onnx file for --detector yunet", metavar="FILE")
    detect_width: int = option(DEFAULT_DETECT_WIDTH, "detect on a copy of the image at least this wide (photos: at least "
                               "640, where a 40 px face is found)", bounds=(32, None))
    prior: str = option("model", "the decision rule of requests that name none (each request may pass ?prior=)",
                        choices=PRIOR_CHOICES)
    provider: str = option("auto", PROVIDER_HELP)
    workers: int = option(DEFAULT_WORKERS, "images analysed at once, one thread each (default: the cores, at most 8)",
                          bounds=(1, 64))
    queue: int = option(None, "requests that may wait for a worker; past workers + queue a request gets 503 with "
                        "Retry-After", bounds=(0, 1024), none_means="as many as --workers")
    max_bytes: int = option(DEFAULT_MAX_BYTES, "largest request body in bytes (larger: 413)", bounds=(1024, None))
