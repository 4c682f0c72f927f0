"""--provider: what auto chooses, what an explicit request gets, and one line with exit code 2 when it cannot be met.
onnxruntime's provider list and the CUDA device count are faked, so this runs on any machine."""

from __future__ import annotations

import os
import re

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from fer_runtime import providers
from fer_runtime.providers import CPU, CUDA, ProviderChoice, ProviderError, check_started, resolve

CLASSES = ("angry", "happy", "sad")
GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]


@pytest.fixture
def fake_ort(monkeypatch):
    """Set what this onnxruntime lists and how many CUDA devices answer."""

    def fake(listed: list[str], devices: int = 0) -> None:
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(listed))
        monkeypatch.setattr(providers, "cuda_device_count", lambda: devices)

    return fake


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(CLASSES)


def test_auto_is_the_cpu_without_cuda(fake_ort):
    fake_ort([CPU])
    choice = resolve("auto")
    assert choice.providers == (CPU,) and choice.name == "cpu" and "no CUDA" in choice.reason


def test_auto_does_not_ask_for_cuda_where_no_device_answers(fake_ort):
    fake_ort(GPU_BUILD, devices=0)  # onnxruntime-gpu on a machine without a GPU
    choice = resolve("auto")
    assert choice.providers == (CPU,) and "no CUDA device" in choice.reason


def test_auto_takes_cuda_with_a_device_and_the_cpu_behind_it(fake_ort):
    fake_ort(GPU_BUILD, devices=1)
    assert resolve("auto").providers == (CUDA, CPU) and resolve("AUTO").name == "cuda"


@pytest.mark.parametrize("request_, expected", [
    ("cpu", (CPU,)), ("tensorrt", ("TensorrtExecutionProvider", CUDA, CPU)),
    ("TensorrtExecutionProvider", ("TensorrtExecutionProvider", CUDA, CPU)), ("cuda", (CUDA, CPU)),
])
def test_explicit_requests_get_exactly_that_provider(fake_ort, request_, expected):
    fake_ort(GPU_BUILD, devices=1)
    assert resolve(request_).providers == expected


def test_a_provider_onnxruntime_lists_is_known_by_its_short_name(fake_ort):
    fake_ort(["VitisAIExecutionProvider", CPU])
    assert resolve("vitisai").providers == ("VitisAIExecutionProvider", CPU)


@pytest.mark.parametrize("listed, devices, request_, message", [
    ([CPU], 0, "cuda", "has no CUDAExecutionProvider (it has: auto, cpu); for CUDA: pip install 'fer-toolchain[gpu]'"),
    (GPU_BUILD, 0, "cuda", "no CUDA device answers on this machine"),
    ([CPU], 0, "openvino", "has no OpenVINOExecutionProvider (it has: auto, cpu)"),
    ([CPU], 0, "warp-drive", "has no warp-drive"),
])
def test_a_request_that_cannot_be_met_is_a_provider_error(fake_ort, listed, devices, request_, message):
    fake_ort(listed, devices)
    with pytest.raises(ProviderError, match=re.escape(message)):
        resolve(request_)


def test_a_provider_that_does_not_start_fails_a_request_and_falls_back_for_auto():
    log = "2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:1] Failed to load libcudnn.so.9: no such file\n"
    with pytest.raises(ProviderError, match="could not start CUDAExecutionProvider .*libcudnn.so.9"):
        check_started(ProviderChoice("cuda", (CUDA, CPU)), [CPU], log)
    auto = check_started(ProviderChoice("auto", (CUDA, CPU)), [CPU], log)
    assert auto.providers == (CPU,) and "cuda did not start" in auto.reason and "libcudnn" in auto.reason
    started = ProviderChoice("cuda", (CUDA, CPU))
    assert check_started(started, [CUDA, CPU]) is started


def test_captured_stderr_catches_what_native_code_writes(capfd):
    with providers.captured_stderr() as log:
        os.write(2, b"[E:onnxruntime] something failed\n")
    assert "something failed" in log[0] and capfd.readouterr().err == ""


def test_the_session_runs_on_the_chosen_provider(fake_ort, model, capfd):
    from fer_runtime.session import OnnxModel

    fake_ort(GPU_BUILD, devices=0)
    m = OnnxModel(model, threads=1)
    assert m.session.get_providers() == [CPU] and m.provider.request == "auto"
    assert capfd.readouterr().err == ""  # auto never asked for CUDA here, so onnxruntime printed nothing


def test_fer_run_says_what_auto_chose_and_refuses_what_cannot_be(fake_ort, model):
    from fer_runtime.cli import DEMO_IMAGE
    from fer_runtime.cli import main as run_cli

    fake_ort([CPU])
    r = CliRunner().invoke(run_cli, ["--source", str(DEMO_IMAGE), "--model", str(model), "--no-display"])
    assert r.exit_code == 0, r.output
    assert [line for line in r.output.splitlines() if "provider" in line] == [
        "fer-run: running on cpu (CPUExecutionProvider); --provider auto: this onnxruntime has no CUDA"
    ]
    r = CliRunner().invoke(run_cli, ["--source", str(DEMO_IMAGE), "--model", str(model), "--no-display", "--provider",
                                     "cuda"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fer-run: error: --provider cuda: "), r.output
    r = CliRunner().invoke(run_cli, ["--source", str(DEMO_IMAGE), "--model", str(model), "--no-display", "--provider",
                                     "cpu"])
    assert r.exit_code == 0 and "running on" not in r.output


def test_fer_bench_refuses_a_provider_it_cannot_have(fake_ort, model, tree_factory, tmp_path):
    from benchmarks.bench import main as bench_main

    fake_ort([CPU])
    root = tree_factory("train-test", per_class=2)
    r = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(root), "--out-dir", str(tmp_path / "o"),
                                        "--provider", "cuda", "--no-incumbent"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fer-bench: error: --provider cuda: "), r.output
    assert not (tmp_path / "o").exists()


def test_no_onnxruntime_is_one_line_naming_the_extras(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(ProviderError, match=r"pip install 'fer-toolchain\[cpu\]'"):
        resolve("auto")
