"""Each exported file's decision rule: its softmax temperature and prior correction fitted on val and written into its
contract; and the class prior of the training split behind it (under the sampler the run trained with)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

from fer_export.onnx_export import save_onnx_atomic, set_contract
from fer_runtime.backends import load_model
from fer_runtime.calibration import T_RANGE, fit_prior_correction, fit_temperature, training_prior
from fer_runtime.contract import ModelContract
from fer_runtime.data import DecodedSplit
from fer_runtime.options import checked_values, load_recipe
from fer_train.config import TrainConfig


def calibrate_onnx(path: Path, val: DecodedSplit, threads: int = 0, contract: ModelContract | None = None) -> dict:
    """Fit this file's own temperature on val (INT8 logits differ a little from fp32's), then its prior correction
    (after the temperature, on the same split), and write both into its contract (``contract``: the one to write
    instead of the file's, e.g. with a training prior added). Returns the fit."""
    model = load_model(path, threads=threads, provider="cpu")
    raw = model.raw_outputs(val.images)
    c = contract or model.contract
    temperature = fit_temperature(raw, val.labels)
    fit = {"temperature": temperature}
    if temperature <= T_RANGE[0] * 1.01:
        # the NLL still falls at the low end of the range: on a few val images all (or nearly all) right it would
        # sharpen every probability to 1.00; nothing to calibrate on, so the model's own scale stays
        wrong = int((raw.argmax(1) != val.labels).sum())
        fit["note"] = (f"the temperature fit ran to the end of its range ({temperature:g}) on {len(val.labels)} val "
                       f"images ({wrong} wrong): too few mistakes to calibrate on, temperature kept at 1")
        print(f"fer-export: warning: {path.name}: {fit['note']}", file=sys.stderr)
        temperature = fit["temperature"] = 1.0
    if c.class_prior:
        fit.update(fit_prior_correction(raw, val.labels, temperature, c.class_prior, c.output))
    write_contract(path, c.replace(temperature=temperature, prior_correction=fit.get("prior_correction", 0.0)))
    return fit


def write_contract(path: Path, contract: ModelContract) -> None:
    proto = onnx.load(str(path))
    set_contract(proto, contract)
    save_onnx_atomic(proto, path)


def with_training_prior(contract: ModelContract, train: DecodedSplit, sampler: str) -> ModelContract:
    """The contract with the class frequencies the model saw in training (its split under its sampler)."""
    return contract.replace(class_prior=training_prior(train.labels, contract.num_classes, sampler, train.targets))


def training_sampler(provenance: dict) -> tuple[str, str]:
    """The fer-train sampler a model was trained with, and where that was found: its contract, its run's
    config.json, or the shipped recipe that writes its run; else "random" (a file exported before contracts
    recorded it, with neither beside it)."""
    if "sampler" in provenance:
        return provenance["sampler"], "its contract"
    run = Path(provenance.get("source_checkpoint", "")).parent
    config = run / "config.json"
    if run.name and config.is_file():
        saved = json.loads(config.read_text()).get("sampler", "random")  # only the sampler: the rest may be older
        return checked_values(TrainConfig, {"sampler": saved}, str(config))["sampler"], str(config)
    from fer_models import MODELS_DIR

    for recipe in sorted((MODELS_DIR / "recipes").glob("*.toml")):
        options = TrainConfig.from_saved(load_recipe(recipe, TrainConfig, "train"))
        if run.name and options.name == run.name:
            return options.sampler, f"the recipe {recipe.name}, which writes {run.name}"
    return "random", "not recorded: the label frequencies"
