"""``--format onnx,openvino,tflite``: the exported ONNX files converted to the other runtimes' formats, each file
checked against the ONNX file of the same precision on validation images, and timed beside it.

ONNX is always written: it is what the other formats are made from. A format's converter comes from its extra; one that
is not installed is named before any work starts (``check_formats``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fer_export.onnx_export import ExportError
from fer_export.rows import latency_ms
from fer_runtime.backends import load_model
from fer_runtime.options import OptionError

# format -> (its file suffix, the module that converts to it, the extra that installs that module)
FORMATS = {"onnx": (".onnx", "onnx", "train"), "openvino": (".xml", "openvino", "openvino"),
           "tflite": (".tflite", "litert_torch", "litert-export")}
MIN_AGREEMENT = 0.99  # top-1 agreement with the ONNX file of the same precision, on validation images
MAX_MEAN_ABS_DIFF = 0.01  # mean absolute difference of the probabilities (under the decision rule)


def requested_formats(text: str) -> list[str]:
    """``--format``'s comma list, checked: known names, each once."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise OptionError(f"--format {text!r}: give a comma list of {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def check_formats(text: str) -> list[str]:
    """The formats asked for, each with its converter installed: one line naming the extra when one is not."""
    formats = requested_formats(text)
    for name in formats:
        _, module, extra = FORMATS[name]
        if importlib.util.find_spec(module) is None:
            raise OptionError(f"--format {name} needs {module}, which is not installed: pip install 'fer-toolchain[{extra}]'")
    return formats


def export_formats(formats: list[str], out: Path, val_images: np.ndarray, calibration: np.ndarray | None,
                   report: dict) -> None:
    """Every format but ONNX from ``out``'s model.onnx (and model.int8.onnx where it is there), each file checked and
    timed against its ONNX file into ``report["formats"]``; an ``ExportError`` when one disagrees."""
    sources = {"fp32": out / "model.onnx", "int8": out / "model.int8.onnx"}
    for name in formats:
        if name == "onnx":
            continue
        for precision, onnx_path in sources.items():
            if not onnx_path.is_file():
                continue
            path = onnx_path.with_suffix(FORMATS[name][0])
            convert(name, sources["fp32"], path, onnx_path if precision == "int8" else None, calibration)
            row = parity_row(name, precision, onnx_path, path, val_images)
            report.setdefault("formats", []).append(row)
            report["paths"][f"{name} {precision}"] = str(path)
            print(f"fer-export: {path.name} ({row['runtime']}) against {onnx_path.name} on {row['images']} val images: "
                  f"top-1 agreement {row['top1_agreement']:.4%}, mean abs probability difference "
                  f"{row['mean_abs_prob_diff']:.4f}; {row['latency_ms']:.3f} ms against {row['onnx_latency_ms']:.3f} ms")
            if row["top1_agreement"] < MIN_AGREEMENT or row["mean_abs_prob_diff"] > MAX_MEAN_ABS_DIFF:
                raise ExportError(f"{path.name} disagrees with {onnx_path.name}: top-1 agreement "
                                  f"{row['top1_agreement']:.4%} (need {MIN_AGREEMENT:.0%}), mean abs probability "
                                  f"difference {row['mean_abs_prob_diff']:.4f} (at most {MAX_MEAN_ABS_DIFF})")


def convert(name: str, fp32_onnx: Path, path: Path, int8_onnx: Path | None, calibration: np.ndarray | None) -> Path:
    """One file of format ``name`` at ``path``: fp32, or standing for ``int8_onnx``."""
    if name == "openvino":
        from fer_export.openvino_export import ir_from_onnx

        return ir_from_onnx(int8_onnx or fp32_onnx, path)
    from fer_export.litert_export import tflite_from_onnx

    return tflite_from_onnx(fp32_onnx, path, int8_onnx, calibration)


def parity_row(name: str, precision: str, onnx_path: Path, path: Path, images: np.ndarray) -> dict:
    """The file against its ONNX file: probabilities under each file's decision rule, top-1 agreement and mean absolute
    difference; both timed at batch 1, one thread, interleaved."""
    reference, model = load_model(onnx_path, provider="cpu"), load_model(path, provider="cpu")
    expected, got = reference.predict_pixels(images), model.predict_pixels(images)
    latency, onnx_latency = latency_ms(path, onnx_path)
    return {"format": name, "precision": precision, "file": str(path), "runtime": model.provider.runtime,
            "file_kb": round(model.size_bytes() / 1024, 1), "reference": str(onnx_path), "images": int(len(images)),
            "top1_agreement": float(np.mean(expected.argmax(1) == got.argmax(1))),
            "mean_abs_prob_diff": float(np.abs(expected - got).mean()), "latency_ms": latency, "onnx_latency_ms": onnx_latency}

