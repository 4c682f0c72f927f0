"""fer-serve: facial expressions over HTTP on this machine, and a webcam page that draws them."""

from __future__ import annotations

import socket

import click

from fer_runtime.cli import quiet_opencv
from fer_runtime.contract import ContractError
from fer_runtime.errors import FerError
from fer_runtime.options import FerCommand, config_of, config_options
from fer_runtime.outputs import version_option
from fer_runtime.serve.config import ServeConfig


def _uvicorn():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise FerError("fer-serve needs the serve extra: pip install 'fer-toolchain[serve]'") from None
    return uvicorn


def recognizers(cfg: ServeConfig) -> dict:
    """One recognizer per decision rule this model has (``?prior=``); the default one's errors are the user's."""
    import cv2

    from fer_runtime.api import FaceExpressionRecognizer
    from fer_runtime.decision import PRIOR_CHOICES

    # one core per request: a server's throughput comes from its workers, and OpenCV's own threads would make every
    # worker compete for all cores (benchmarks/results/threads)
    cv2.setNumThreads(1)
    make = lambda prior: FaceExpressionRecognizer(cfg.model or "ferplus", detector=cfg.detector,
                                                  detector_model=cfg.detector_model, detect_width=cfg.detect_width,
                                                  provider=cfg.provider, threads=1, prior=prior)
    found = {cfg.prior: make(cfg.prior)}
    for prior in PRIOR_CHOICES:
        if prior not in found:
            try:
                found[prior] = make(prior)
            except ContractError:  # e.g. balanced for a model that records no class prior
                pass
    return found


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise FerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@click.command("fer-serve", cls=FerCommand)
@version_option("fer-serve")
@config_options(ServeConfig)
def main(**options) -> int:
    """Facial expressions over HTTP: POST /analyze (an image in, records out), GET /health, GET / (a webcam page)."""
    return serve(config_of(ServeConfig, options))


def serve(cfg: ServeConfig) -> int:
    uvicorn = _uvicorn()
    from fer_runtime.serve.app import Limits, create_app

    if cfg.detector == "yunet" and not cfg.detector_model:
        raise click.UsageError("--detector yunet needs --detector-model FILE")
    limits = Limits(cfg.max_bytes, cfg.workers, cfg.workers if cfg.queue is None else cfg.queue)
    found = recognizers(cfg)
    app = create_app(found, cfg.prior, str(cfg.model or "ferplus"), limits)
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"fer-serve: http://{shown}:{port}/ (model {cfg.model or 'ferplus'}, {found[cfg.prior].provider}, "
               f"{limits.workers} workers, {limits.admitted} requests at once, bodies up to {limits.max_bytes} bytes)",
               err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    with quiet_opencv():  # YuNet's "[ WARN:0@...]" lines, as fer-run keeps them off
        server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    main()
