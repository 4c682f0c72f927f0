"""Knowledge-distillation teachers: fer-train checkpoints or exported ONNX models, alone or averaged.

A teacher is a function from the student's normalised batch to logits. Several teachers, or one
with flip TTA, act as one model whose logits are the log of their mean probability: the same
ensemble ``fer-eval`` scores, so a teacher can be picked on validation before distilling from it.

``teacher_targets`` scores the teachers once, on the un-augmented training images, instead of on
every batch: no teacher cost per step (not with mixup/cutmix, whose batches are new images).
``stored_teacher_targets`` keeps them on disk beside the decode cache, so a resumed run, or
another student of the same teachers, does not score them again. ``save_targets`` writes them as a file
that travels (a run's ``teacher_targets.npz``), from which ``load_targets`` lets a student distil without
the teachers, checked against the run's training images.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError
from fer_runtime.outputs import atomic_path, atomic_write_npz
from fer_train.augment import normalize
from fer_train.engine import Teacher


@dataclass
class LoadedTeacher:
    path: str
    contract: ModelContract
    net: Callable[[torch.Tensor], torch.Tensor]  # the teacher's own normalised input -> logits


def load_teacher(path: str, device: torch.device, threads: int = 0) -> LoadedTeacher:
    """A fer-train checkpoint (.pt) or an ONNX model exported by fer-export (.onnx)."""
    if Path(path).suffix.lower() == ".onnx":
        from fer_runtime.backends import load_model

        onnx = load_model(path, threads=threads, provider="cpu")

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            out = torch.from_numpy(onnx.run(x.float().contiguous().cpu().numpy())).to(x.device)
            return out.clamp_min(1e-12).log() if onnx.contract.output == "probabilities" else out

        return LoadedTeacher(path, onnx.contract, run_onnx)
    from fer_train.checkpoint import load_checkpoint, model_from_checkpoint

    model, contract = model_from_checkpoint(load_checkpoint(path))
    return LoadedTeacher(path, contract, model.to(device))


def teacher_paths(value: str | list[str] | None) -> list[str]:
    """``--teacher`` as a list; older run configs hold one path, and '' means none."""
    return [p for p in ([value] if isinstance(value, str) else (value or [])) if p]


def check_teachers(teachers: list[LoadedTeacher], classes: list[str], channels: int, input_size: tuple[int, int]) -> None:
    for t in teachers:
        if list(t.contract.classes) != list(classes):
            raise DataError(f"teacher classes {list(t.contract.classes)} differ from the data's {list(classes)} ({t.path})")
        if t.contract.channels != channels or tuple(t.contract.input_size) != tuple(input_size):
            raise DataError(f"teacher and student need the same input size and channels ({t.path})")


def make_teacher(teachers: list[LoadedTeacher], contract: ModelContract, device: torch.device, tta: str = "none") -> Teacher:
    """One callable for the training loop; a single teacher without TTA returns its raw logits."""
    members = [_renormalised(t, contract, device) for t in teachers]
    if len(members) == 1 and tta == "none":
        return members[0]

    def ensemble(x: torch.Tensor) -> torch.Tensor:
        # one call per teacher with both views in the batch: half the calls on the training hot path
        views = torch.cat([x, x.flip(-1)]) if tta == "flip" else x
        probs = torch.stack([F.softmax(m(views).float(), dim=1) for m in members])  # teachers x views*N x K
        return probs.view(-1, len(x), probs.shape[-1]).mean(0).clamp_min(1e-12).log()

    return ensemble


def _renormalised(teacher: LoadedTeacher, contract: ModelContract, device: torch.device) -> Teacher:
    # The student's batch is normalised with the student's mean/std; renormalise for the teacher.
    tc = teacher.contract
    ms, ss = torch.tensor(contract.mean).view(1, -1, 1, 1), torch.tensor(contract.std).view(1, -1, 1, 1)
    mt, st = torch.tensor(tc.mean).view(1, -1, 1, 1), torch.tensor(tc.std).view(1, -1, 1, 1)
    scale, shift = (ss / st).to(device), ((ms - mt) / st).to(device)
    return lambda x: teacher.net(x * scale + shift)


@torch.no_grad()
def teacher_targets(
    teachers: list[LoadedTeacher], images_u8: np.ndarray, device: torch.device, tta: str = "none", batch_size: int = 256
) -> torch.Tensor:
    """Log of the teachers' mean probability for every training image (N x K), scored once.

    Each teacher sees ``images_u8`` normalised by its own contract; ``tta="flip"`` adds each one's mirror view.
    """
    probs = None
    for t in teachers:
        score = make_teacher([t], t.contract, device, tta)  # in the teacher's own normalisation: no renormalising
        chunks = []
        for i in range(0, len(images_u8), batch_size):
            x = normalize(torch.from_numpy(np.ascontiguousarray(images_u8[i : i + batch_size])), t.contract.mean,
                          t.contract.std)
            chunks.append(F.softmax(score(x.to(device)).float(), dim=1).cpu())
        member = torch.cat(chunks)
        probs = member if probs is None else probs + member
    return (probs / len(teachers)).clamp_min(1e-12).log()


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stored_teacher_targets(
    teachers: list[LoadedTeacher], images_u8: np.ndarray, device: torch.device, tta: str, cache_dir: Path
) -> tuple[torch.Tensor, Path | None]:
    """``teacher_targets``, read from ``cache_dir`` when the same teacher files scored the same images before.

    The key is the teachers' file contents, the TTA, the device type and the images' bytes. Returns the targets and
    the file they were read from (None: scored now, then stored).
    """
    h = hashlib.sha1(f"targets-v1|{tta}|{device.type}|{images_u8.shape}".encode())
    for t in teachers:
        h.update(_file_digest(t.path).encode() if Path(t.path).is_file() else t.path.encode())
    h.update(np.ascontiguousarray(images_u8).tobytes())
    path = Path(cache_dir) / f"teacher-targets-{h.hexdigest()[:20]}.pt"
    if path.is_file():
        try:
            targets = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            targets = None  # a damaged cache file: score again and replace it
        if isinstance(targets, torch.Tensor) and targets.shape[0] == len(images_u8):
            return targets, path
    targets = teacher_targets(teachers, images_u8, device, tta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(targets, tmp)
    return targets, None


def images_digest(images_u8: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(images_u8).tobytes()).hexdigest()


def save_targets(path: str | Path, targets: torch.Tensor, images_u8: np.ndarray, classes: list[str], teachers: list[str],
                 tta: str) -> None:
    """The teachers' log-probabilities for every training image (float16), with what they were scored on and by."""
    atomic_write_npz(path, compress=True, log_probs=targets.numpy().astype(np.float16),
                     images_sha1=np.array(images_digest(images_u8)), classes=np.array(classes),
                     teachers=np.array(teachers), tta=np.array(tta))


def load_targets(path: str | Path, images_u8: np.ndarray, classes: list[str]) -> tuple[torch.Tensor, str]:
    """A ``save_targets`` file as N x K log-probabilities for these training images, and who scored them; a file
    made on other images or classes is refused."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in ("log_probs", "images_sha1", "classes", "teachers", "tta")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"cannot read teacher targets {path}: {str(exc) or type(exc).__name__}") from None
    if stored["classes"].tolist() != list(classes):
        raise DataError(f"teacher targets {path} are for classes {stored['classes'].tolist()}, the data has {list(classes)}")
    if str(stored["images_sha1"]) != images_digest(images_u8):
        raise DataError(f"teacher targets {path} were scored on other training images than this run's "
                        "(another data root, split or decode)")
    who = f"{len(stored['teachers'])} teacher(s), tta {stored['tta']}"
    return torch.from_numpy(stored["log_probs"].astype(np.float32)), who
