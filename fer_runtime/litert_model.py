"""The LiteRT (TFLite) backend: a ``.tflite`` file run by ai-edge-litert's interpreter (XNNPACK) on the CPU
(``pip install 'fer-toolchain[litert]'``). fer-export's files carry their ``fer_contract`` in the TFLite metadata
(``with_metadata`` writes it, ``metadata_of`` reads it); fer-bench's incumbent is another subclass, with its contract
known in advance.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from fer_runtime.contract import METADATA_KEY, ContractError, ModelContract
from fer_runtime.decision import prior_correction_for
from fer_runtime.errors import FerError, first_line
from fer_runtime.model import ModelBackend, cpu_runtime, import_runtime
from fer_runtime.providers import ProviderChoice, captured_stderr

EXTRA = "litert"


def metadata_of(buffer: bytes) -> dict[str, bytes]:
    """The metadata entries of a TFLite flatbuffer: name -> bytes."""
    schema = import_runtime("ai_edge_litert.schema_py_generated", EXTRA, ".tflite")
    model = schema.Model.GetRootAs(buffer, 0)
    found = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        found[entry.Name().decode()] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return found


def with_metadata(buffer: bytes, name: str, value: bytes) -> bytes:
    """The TFLite flatbuffer with the metadata entry ``name`` set to ``value`` (an earlier one of that name replaced)."""
    import flatbuffers

    schema = import_runtime("ai_edge_litert.schema_py_generated", EXTRA, ".tflite")
    model = schema.ModelT.InitFromPackedBuf(bytearray(buffer), 0)
    data = schema.BufferT()
    data.data = np.frombuffer(value, np.uint8)
    model.buffers.append(data)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())] + [entry]
    builder = flatbuffers.Builder(len(buffer) + len(value) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class LiteRtModel(ModelBackend):
    """A TFLite classifier and its contract, one image per interpreter call (the files have a fixed batch of one).

    The input may be N x C x H x W (litert-torch's files) or N x H x W x C; an integer input and output (full-integer
    INT8) are quantized and dequantized here with the file's own scale and zero point. ``threads``: the interpreter's
    threads (0: one per core). Calls from several threads take turns: the interpreter holds one input and output."""

    suffixes = (".tflite",)

    def __init__(self, path: str | Path, threads: int = 0, provider: str | ProviderChoice | None = None,
                 prior: str = "model") -> None:
        self.path = Path(path)
        buffer = self.path.read_bytes()
        try:
            if buffer[4:8] != b"TFL3":
                raise ValueError("no TFL3 identifier")
            metadata = metadata_of(buffer)
        except FerError:
            raise  # the runtime not installed: its own line
        except Exception as exc:  # a damaged flatbuffer fails anywhere in the generated reader: struct, index, unicode
            raise ContractError(f"{self.path} is not a readable TFLite model ({type(exc).__name__}: {exc})"[:300]) from None
        if METADATA_KEY not in metadata:
            raise ContractError(f"{self.path} has no '{METADATA_KEY}' metadata: export it with fer-export --format tflite")
        self.contract = ModelContract.from_json(metadata[METADATA_KEY].decode())
        self.prior_correction = prior_correction_for(self.contract, prior)
        self.open_interpreter(threads, provider)

    def open_interpreter(self, threads: int, provider: str | ProviderChoice | None) -> None:
        """The interpreter of ``self.path`` (ai-edge-litert importable), its input layout checked against the contract."""
        litert = import_runtime("ai_edge_litert.interpreter", EXTRA, ".tflite")
        version = getattr(import_runtime("ai_edge_litert", EXTRA, ".tflite"), "__version__", "")
        self.provider = cpu_runtime(f"LiteRT {version} (CPU, XNNPACK)".replace("  ", " "), provider, ".tflite")
        # TFLite announces its XNNPACK delegate on stderr ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
        with captured_stderr():
            try:
                self.interpreter = litert.Interpreter(model_path=str(self.path), num_threads=threads or None)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise ContractError(f"{self.path} is not a readable TFLite model: {first_line(exc)}") from None
        self._in, self._out = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        shape, c = tuple(self._in["shape"][1:]), self.contract
        if shape not in ((c.channels, *c.input_size), (*c.input_size, c.channels)):
            raise ContractError(f"{self.path}: the input is {list(self._in['shape'])}, not an image of the contract's "
                                f"{c.channels} x {list(c.input_size)}")
        self.channels_last = shape != (c.channels, *c.input_size)
        self._turn = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 N x C x H x W -> raw outputs N x K, one interpreter call per image."""
        out = []
        for x in batch:
            x = x.transpose(1, 2, 0) if self.channels_last else x
            with self._turn:
                self.interpreter.set_tensor(self._in["index"], _quantized(x[None], self._in))
                self.interpreter.invoke()
                out.append(_dequantized(self.interpreter.get_tensor(self._out["index"])[0], self._out))
        return np.stack(out) if out else np.zeros((0, self.contract.num_classes), np.float32)


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return np.ascontiguousarray(x, np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
