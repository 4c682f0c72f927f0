"""The one scorer of a model on labelled images: what fer-export's rows, fer-bench's table and its shift report quote.

A model is scored on the classes it shares with the data (``fer_runtime.data.classes``): images of a class it lacks
are left out, a prediction of a class the data lacks is wrong. Its figures are read under its decision rule (the
model's ``prior_correction``), with the training prior's (the raw argmax, ``quality_train_prior``) and the
calibration beside them, all from one pass of raw outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer_runtime.calibration import calibration_summary, reliability
from fer_runtime.data.classes import SharedClasses, shared_classes
from fer_runtime.decision import decision_probabilities
from fer_runtime.metrics import classification_metrics
from fer_runtime.model import ModelBackend

# the figures kept of the raw argmax's quality, beside the decision rule's
TRAIN_PRIOR_FIGURES = ("accuracy", "macro_f1", "balanced_accuracy")


@dataclass
class SplitScores:
    """One model's figures on one set of images."""

    quality: dict  # accuracy, macro-F1, balanced accuracy, per class, confusion matrix, under the decision rule
    quality_train_prior: dict  # TRAIN_PRIOR_FIGURES of the raw argmax (temperature only: tau 0)
    calibration: dict  # ECE before / after the temperature, the reliability curve, the decision rule's ECE
    predicted: list[str]  # per image given: the model's class under the decision rule, "" where not scored


class SplitScorer:
    """Scores ``model`` on images labelled ``labels`` (indices into ``data_classes``).

    ``score`` and ``quality`` take every image the labels stand for: uint8 N x C x H x W in the model's layout and
    size. Raises ``DataError`` when the model and the data share no class.
    """

    def __init__(self, model: ModelBackend, data_classes: Sequence[str], labels: np.ndarray) -> None:
        self.model = model
        self.shared: SharedClasses = shared_classes(model.contract.classes, list(data_classes), labels)
        self._other = "other" if self.shared.extra else None

    @property
    def note(self) -> str:
        """What sharing the classes left out or counts as wrong ("" when the class lists match)."""
        return self.shared.note()

    def quality(self, images: np.ndarray) -> dict:
        """The figures under the decision rule only (the shift report's)."""
        return self._quality(self._probabilities(self._raw(images), self.model.prior_correction))

    def score(self, images: np.ndarray) -> SplitScores:
        """Every figure: the decision rule's, the raw argmax's and the calibration, from one pass of the model."""
        c, shared = self.model.contract, self.shared
        raw = self._raw(images)
        probs = self._probabilities(raw, self.model.prior_correction)
        train_prior = self._quality(self._probabilities(raw, 0.0))
        calibration = {**calibration_summary(raw, shared.label_in_model, c.temperature, c.output),
                       "ece_decision_rule": reliability(probs, shared.label_in_model)["ece"]}
        predicted = [""] * len(shared.keep)
        for i, k in zip(np.flatnonzero(shared.keep), probs.argmax(1)):
            predicted[i] = c.classes[k]
        return SplitScores(self._quality(probs), {k: train_prior[k] for k in TRAIN_PRIOR_FIGURES}, calibration, predicted)

    def _raw(self, images: np.ndarray) -> np.ndarray:
        if len(images) != len(self.shared.keep):
            raise ValueError(f"{len(images)} images for {len(self.shared.keep)} labels")
        return self.model.raw_outputs(images[self.shared.keep])

    def _probabilities(self, raw: np.ndarray, tau: float) -> np.ndarray:
        return decision_probabilities(raw, self.model.contract, tau)

    def _quality(self, probs: np.ndarray) -> dict:
        shared = self.shared
        return classification_metrics(shared.labels, shared.from_model[probs.argmax(1)], shared.classes, self._other)
