"""fer-export --format onnx,openvino,tflite on a tiny registry model: every file written, checked against its ONNX
file, and run by fer-run through its own runtime; a missing extra or a disagreeing file is one line and exit code 2."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("litert_torch")
if importlib.util.find_spec("openvino") is None:  # not imported here: fer_runtime imports it without its telemetry
    pytest.skip("needs openvino", allow_module_level=True)

from fer_export.cli import main as export_main  # noqa: E402
from fer_export.onnx_export import export_onnx  # noqa: E402
from fer_runtime.backends import load_model  # noqa: E402
from fer_runtime.cli import main as run_cli  # noqa: E402
from fer_runtime.contract import ModelContract  # noqa: E402
from fer_runtime.providers import ProviderError  # noqa: E402
from fer_train.models import create_model  # noqa: E402

FILES = ("model.onnx", "model.int8.onnx", "model.xml", "model.int8.xml", "model.tflite", "model.int8.tflite")
RUNTIMES = {".onnx": "running on cpu", ".xml": "running on OpenVINO", ".tflite": "running on LiteRT"}


@pytest.fixture(scope="module")
def tiny_onnx(tree_factory, tmp_path_factory):
    """A registry VGG (width 1/8) with a contract naming it and its data: what fer-export writes, without training."""
    import torch

    torch.manual_seed(0)
    root = tree_factory("train-val-test", per_class=16, seed=3)
    contract = ModelContract(classes=("angry", "happy", "sad"), mean=(0.4,), std=(0.3,),
                             provenance={"data_root": str(root), "model": {"name": "vgg", "kwargs": {"width": 0.125}}})
    path = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), contract, tmp_path_factory.mktemp("m") / "m.onnx")
    return path, root


@pytest.fixture(scope="module")
def exported(tiny_onnx, tmp_path_factory):
    """Every format exported with the network refused: the converters work offline and reach for nothing."""
    import socket

    path, root = tiny_onnx
    out = tmp_path_factory.mktemp("formats")
    attempts = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address) or (_ for _ in ()).throw(
            OSError("no network in this test")))
        assert export_main(["--model", str(path), "--int8", "--format", "onnx,openvino,tflite", "--calib-size", "24",
                            "--max-drop", "100", "--out-dir", str(out), "--name", "f"]) == 0
    assert not attempts
    return out / "f", root


def test_openvino_runs_without_its_usage_telemetry(exported):
    import sys

    load_model(exported[0] / "model.xml")
    assert sys.modules.get("openvino_telemetry", "not imported") is None  # its own stub instead: nothing is sent


def test_every_format_is_written_with_its_contract_and_agrees_with_its_onnx_file(exported):
    folder, _ = exported
    assert all((folder / name).is_file() for name in FILES) and (folder / "model.int8.bin").is_file()
    report = json.loads((folder / "export_report.json").read_text())
    rows = {(r["format"], r["precision"]): r for r in report["formats"]}
    assert set(rows) == {(f, p) for f in ("openvino", "tflite") for p in ("fp32", "int8")}
    for row in rows.values():
        assert row["top1_agreement"] >= 0.99 and row["mean_abs_prob_diff"] <= 0.01 and row["images"] == 48
    assert "## Formats" in (folder / "export_report.md").read_text()
    onnx = load_model(folder / "model.int8.onnx", provider="cpu").contract
    for name in ("model.int8.xml", "model.int8.tflite"):  # each file carries the contract of its ONNX file
        assert load_model(folder / name).contract == onnx


def _grids_and_input(folder, name: str) -> tuple[set, set, type]:
    """(the ONNX INT8 file's activation grids, the TFLite file's int8 grids, the TFLite file's input type)."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    from onnx import numpy_helper

    interpreter = Interpreter(model_path=str(folder / f"{name}.int8.tflite"))
    graph = onnx.load(str(folder / f"{name}.int8.onnx")).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    onnx_grids = {(round(float(init[n.input[1]]), 7), int(init[n.input[2]]) - 128) for n in graph.node
                  if n.op_type == "QuantizeLinear" and n.input[0] not in init}
    tflite_grids = {(round(float(t["quantization"][0]), 7), int(t["quantization"][1])) for t in interpreter.get_tensor_details()
                    if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) == 1}
    return onnx_grids, tflite_grids, interpreter.get_input_details()[0]["dtype"]


def test_tflite_int8_quantizes_what_the_onnx_int8_file_quantizes_on_its_grids(exported):
    onnx_grids, tflite_grids, input_type = _grids_and_input(exported[0], "model")
    assert onnx_grids and onnx_grids <= tflite_grids, onnx_grids - tflite_grids  # the two round alike
    assert input_type == np.float32  # the ONNX file keeps the first convolution float (--keep-float's default)


def test_with_keep_float_none_the_tflite_int8_file_is_full_integer(tiny_onnx, tmp_path):
    # percentile ranges: clipped, unlike the min/max ones the TFLite observers find, so only pinning makes them equal
    assert export_main(["--model", str(tiny_onnx[0]), "--int8", "--keep-float", "none", "--calib-method", "percentile",
                        "--format", "tflite", "--calib-size", "12", "--max-drop", "100", "--out-dir", str(tmp_path),
                        "--name", "n"]) == 0
    onnx_grids, tflite_grids, input_type = _grids_and_input(tmp_path / "n", "model")
    assert onnx_grids and onnx_grids <= tflite_grids, onnx_grids - tflite_grids
    assert input_type == np.int8  # the input on the ONNX file's input grid too


def test_fer_run_takes_every_format_and_names_its_runtime(exported, tmp_path):
    folder, root = exported
    labels = {}
    for name in FILES:
        out = tmp_path / f"{name}.jsonl"
        result = CliRunner().invoke(run_cli, ["--source", str(root / "val"), "--crops", "--model", str(folder / name),
                                              "--no-display", "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert RUNTIMES[(folder / name).suffix] in result.output
        labels[name] = [face["label"] for line in out.read_text().splitlines() for face in json.loads(line)["faces"]]
    assert len(labels["model.onnx"]) == 48
    assert labels["model.xml"] == labels["model.tflite"] == labels["model.onnx"]
    assert labels["model.int8.xml"] == labels["model.int8.onnx"]


def test_a_file_that_disagrees_with_its_onnx_file_fails_the_export(tiny_onnx, tmp_path, monkeypatch, capsys):
    import fer_export.openvino_export as openvino_export

    path, _ = tiny_onnx
    other = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), load_model(path).contract, tmp_path / "other.onnx")
    convert = openvino_export.ir_from_onnx
    monkeypatch.setattr(openvino_export, "ir_from_onnx", lambda onnx_path, xml_path: convert(other, xml_path))
    assert export_main(["--model", str(path), "--format", "openvino", "--out-dir", str(tmp_path), "--name", "d"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "model.xml disagrees with model.onnx" in err[-1] and not (tmp_path / "d").exists()


@pytest.mark.parametrize("fmt, extra", [("openvino", "openvino"), ("tflite", "litert-export")])
def test_a_format_whose_converter_is_missing_is_one_line_naming_its_extra(fmt, extra, tiny_onnx, tmp_path, monkeypatch,
                                                                          capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "litert_torch") else
                        find(name, *a))
    assert export_main(["--model", str(tiny_onnx[0]), "--format", f"onnx,{fmt}", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'fer-toolchain[{extra}]'" in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, extra", [("model.xml", "openvino"), ("model.tflite", "litert")])
def test_a_missing_runtime_names_its_extra(name, extra, exported, monkeypatch):
    import importlib

    imported = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda module, *a: (_ for _ in ()).throw(ImportError(module))
                        if module.split(".")[0] in ("openvino", "ai_edge_litert") else imported(module, *a))
    with pytest.raises(ProviderError, match=rf"pip install 'fer-toolchain\[{extra}\]'"):
        load_model(exported[0] / name)


def test_an_unknown_format_is_refused_before_any_work(tiny_onnx, tmp_path, capsys):
    assert export_main(["--model", str(tiny_onnx[0]), "--format", "onnx,coreml", "--out-dir", str(tmp_path)]) == 2
    assert "--format 'onnx,coreml': give a comma list of onnx, openvino, tflite" in capsys.readouterr().err


def test_an_openvino_model_may_be_shared_by_threads(tmp_path):
    """fer-serve and the API share one model between threads: each call gets the answer it gets alone (one infer
    request shared by threads gave 144 and 165 of 800 calls another call's answer). The shipped model: a tiny one runs too
    fast for calls to overlap."""
    import threading

    from fer_models import MODELS_DIR

    from fer_export.openvino_export import ir_from_onnx

    model = load_model(ir_from_onnx(MODELS_DIR / "ferplus.int8.onnx", tmp_path / "ferplus.int8.xml"), threads=1)
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, (1, model.contract.channels, *model.contract.input_size)).astype(np.float32)
               for i in range(8)]
    alone = [model.probabilities(b) for b in batches]
    wrong = []

    def worker(t: int) -> None:
        for k in range(200):
            i = (t + k) % len(batches)
            if not np.allclose(model.probabilities(batches[i]), alone[i], atol=1e-6):
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, f"{len(wrong)} of 800 calls got another call's answer"
