"""The fer-serve application: ``POST /analyze``, ``GET /health`` and the webcam page, on Starlette.

Requests are admitted up to ``workers + queue`` at once (the rest get 503 with Retry-After, never an unbounded queue);
each admitted image is decoded and analysed on one of ``workers`` threads sharing one ``FaceExpressionRecognizer`` per
decision rule (the API is safe across threads). Bodies are held in memory and nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fer_runtime.api import FaceExpressionRecognizer
from fer_runtime.data import MAX_IMAGE_PIXELS, ImageTooLarge
from fer_runtime.data.images import TIFF_MAGIC, decode_photo, image_header_size

log = logging.getLogger("fer-serve")
# the page's own files, served from memory: the page needs nothing from another host
PAGE_FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8")}
PAGE_POLICY = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' blob:"
RETRY_AFTER_S = 1
# a client that holds an admission slot without sending its body is dropped after this long
BODY_TIMEOUT_S = 30.0
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Limits:
    """What one request may ask: body bytes, and requests admitted at once (analysing or waiting for a worker)."""

    max_bytes: int
    workers: int
    queue: int

    @property
    def admitted(self) -> int:
        return self.workers + self.queue


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Service:
    """The state of one fer-serve: its recognizers (one per decision rule), limits, workers and admission count."""

    def __init__(self, recognizers: dict[str, FaceExpressionRecognizer], default_prior: str, model: str,
                 limits: Limits) -> None:
        self.recognizers, self.default_prior, self.model, self.limits = recognizers, default_prior, model, limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="fer-serve")
        self.admitted = 0  # changed on the event loop only: no lock
        self.page = {route: (files("fer_runtime.serve.static").joinpath(name).read_bytes(), kind)
                     for route, (name, kind) in PAGE_FILES.items()}

    def health(self, _request: Request) -> JSONResponse:
        fer = self.recognizers[self.default_prior]
        limits = {"max_bytes": self.limits.max_bytes, "max_pixels": MAX_IMAGE_PIXELS, "workers": self.limits.workers,
                  "queue": self.limits.queue}
        return JSONResponse({"status": "ok", "model": self.model, "classes": fer.classes, "provider": fer.provider,
                             "priors": sorted(self.recognizers), "prior": self.default_prior, "limits": limits})

    def page_file(self, request: Request) -> Response:
        body, kind = self.page[request.url.path]
        return Response(body, media_type=kind, headers={"Content-Security-Policy": PAGE_POLICY,
                                                        "Cache-Control": "no-cache"})

    async def analyze(self, request: Request) -> Response:
        if self.admitted >= self.limits.admitted:
            return error(503, f"busy: {self.limits.admitted} requests are in progress; retry shortly",
                         {"Retry-After": str(RETRY_AFTER_S)})
        self.admitted += 1
        try:
            fer, crops = self._options(request)
            body = await asyncio.wait_for(self._body(request), BODY_TIMEOUT_S)
            records = await asyncio.get_running_loop().run_in_executor(self.pool, analyze_bytes, fer, body, crops)
            return JSONResponse(records)
        except HttpError as exc:
            return error(exc.status, str(exc), exc.headers)
        except asyncio.TimeoutError:
            return error(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s")
        except ClientDisconnect:  # the client went away: nobody to answer
            return Response(status_code=499)
        except Exception as exc:  # a bug: one line in the log and the answer, no traceback to the client
            log.error("fer-serve: /analyze failed: %s: %s", type(exc).__name__, exc)
            return error(500, f"internal error: {type(exc).__name__}")
        finally:
            self.admitted -= 1

    def _options(self, request: Request) -> tuple[FaceExpressionRecognizer, bool]:
        unknown = sorted(set(request.query_params) - {"crops", "prior"})
        if unknown:
            raise HttpError(400, f"unknown parameter(s) {', '.join(unknown)}: /analyze takes crops and prior")
        crops = request.query_params.get("crops", "").lower()
        if crops not in TRUE + FALSE:
            raise HttpError(400, f"crops must be true or false, got {crops!r}")
        prior = request.query_params.get("prior", self.default_prior)
        if prior not in self.recognizers:
            raise HttpError(400, f"prior must be one of {', '.join(sorted(self.recognizers))}, got {prior!r}")
        return self.recognizers[prior], crops in TRUE

    async def _body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it is known to be over the limit (declared or streamed)."""
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise HttpError(415, "send the image file's bytes as the request body, not a form "
                                 "(curl --data-binary @photo.jpg)")
        too_large = HttpError(413, f"the request body is over {self.limits.max_bytes} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_bytes:
                raise too_large
            chunks.append(chunk)
        if not size:
            raise HttpError(415, "the request body is empty: send an image file's bytes")
        return b"".join(chunks)


def analyze_bytes(fer: FaceExpressionRecognizer, body: bytes, crops: bool) -> list[dict]:
    """An image file's bytes -> the API's records; 415 for what is not an image, 413 for one over the pixel limit."""
    if body[:4] in (b"GIF8", *TIFF_MAGIC) or image_header_size(body) is None:
        raise HttpError(415, "not an image fer-serve reads: send JPEG, PNG, BMP, WebP or PNM bytes")
    try:
        image, scale = decode_photo(body, "the image")
    except ImageTooLarge as exc:
        raise HttpError(413, str(exc)) from None
    if image is None:
        raise HttpError(415, "the body is not an image OpenCV can decode (damaged, or not JPEG, PNG, BMP, WebP or PNM)")
    return fer._analyze(image, crops, scale)


def create_app(recognizers: dict[str, FaceExpressionRecognizer], default_prior: str, model: str, limits: Limits) -> Starlette:
    service = Service(recognizers, default_prior, model, limits)
    routes = [Route("/analyze", service.analyze, methods=["POST"]), Route("/health", service.health, methods=["GET"])]
    routes += [Route(path, service.page_file, methods=["GET"]) for path in PAGE_FILES]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    async def not_routed(request: Request, exc: Exception) -> JSONResponse:  # 404, 405: JSON like every other answer
        status = getattr(exc, "status_code", 404)
        allowed = {"Allow": exc.headers["Allow"]} if getattr(exc, "headers", None) and "Allow" in exc.headers else None
        what = "no such path" if status == 404 else f"{request.method} is not taken here"
        return error(status, f"{what}: POST /analyze, GET /health, GET /", allowed)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_routed, 405: not_routed})
    app.state.service = service
    return app
