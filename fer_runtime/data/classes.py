"""How a model's classes meet a data set's: class names in one vocabulary, and the classes both have."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer_runtime.errors import DataError

# Class-folder names of other data sets, by meaning, in the shipped models' words (CK+ says anger and sadness).
CLASS_ALIASES = {"anger": "angry", "sadness": "sad", "happiness": "happy", "surprised": "surprise", "fearful": "fear",
                 "disgusted": "disgust"}


def canonical_class(name: str) -> str:
    """A class name in the shipped models' words, lower case: the form two class lists are matched in."""
    return CLASS_ALIASES.get(name.lower(), name.lower())


@dataclass
class SharedClasses:
    """How a model is scored on a data set: on the classes both have.

    Images of a class the model lacks are left out; a prediction of a class the data lacks is always wrong (the
    confusion matrix's ``other`` column): the model decides over all its classes, as it does for a user.
    """

    classes: list[str]  # in data order
    keep: np.ndarray  # bool per image: its class is one the model has
    labels: np.ndarray  # the kept images' labels, as indices into ``classes``
    label_in_model: np.ndarray  # the kept images' labels, as indices into the model's classes
    from_model: np.ndarray  # model class index -> index into ``classes``, len(classes) for "other"
    left_out: list[str]  # data classes the model lacks
    extra: list[str]  # model classes the data lacks

    def note(self) -> str:
        parts = []
        if self.left_out:
            parts.append(f"images of {', '.join(self.left_out)} left out (not among the model's classes)")
        if self.extra:
            parts.append(f"a prediction of {', '.join(self.extra)} counts as wrong (not in the data)")
        return "; ".join(parts)


def shared_classes(model_classes: Sequence[str], data_classes: Sequence[str], labels: np.ndarray) -> SharedClasses:
    """The classes a model and a data set share, matched in one vocabulary (``canonical_class``: a model trained on
    CK+'s own words still matches) and named in the data's words; ``DataError`` when they share none."""
    model_keys = [canonical_class(c) for c in model_classes]
    data_keys = [canonical_class(c) for c in data_classes]
    shared = [k for k in data_keys if k in model_keys]
    if not shared:
        raise DataError(f"the model's classes {model_keys} share none with the data's {data_keys}")
    data_to_shared = np.asarray([shared.index(k) if k in shared else -1 for k in data_keys])
    mapped = data_to_shared[np.asarray(labels, np.int64)]
    keep = mapped >= 0
    return SharedClasses(
        classes=[data_classes[data_keys.index(k)] for k in shared], keep=keep, labels=mapped[keep],
        label_in_model=np.asarray([model_keys.index(shared[i]) for i in mapped[keep]], np.int64),
        from_model=np.asarray([shared.index(k) if k in shared else len(shared) for k in model_keys]),
        left_out=[c for c, k in zip(data_classes, data_keys) if k not in model_keys],
        extra=[c for c, k in zip(model_classes, model_keys) if k not in shared],
    )
