"""fer-serve: the Python API behind a local HTTP service (``POST /analyze``, ``GET /health``) and a webcam page
(``GET /``), on Starlette and uvicorn (the ``[serve]`` extra). It imports ``fer_runtime`` and never training or export."""
