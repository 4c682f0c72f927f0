"""The decision rule: a model's raw outputs -> the probabilities its label is read from.

softmax(logits / temperature - tau * log(class prior)): the temperature calibrates the confidence, and the prior
correction tau moves the decision from the training prior (tau 0, the raw argmax) towards a balanced one (tau 1).
Both are fitted on val and recorded in the model's contract; ``--prior`` of fer-run and fer-bench picks another tau.
"""

from __future__ import annotations

import numpy as np

from fer_runtime.contract import ContractError, ModelContract

# fer-run --prior / fer-bench --prior: the contract's own rule, the training prior (raw argmax), or a balanced prior
PRIOR_CHOICES = ("model", "train", "balanced")


def prior_correction_for(contract: ModelContract, prior: str) -> float:
    """The tau a ``--prior`` choice stands for with this model."""
    if prior not in PRIOR_CHOICES:
        raise ContractError(f"prior must be one of {', '.join(PRIOR_CHOICES)}, got {prior!r}")
    if prior == "balanced" and not contract.class_prior:
        raise ContractError("this model's contract records no class prior, so it cannot be balanced: use --prior model")
    return {"model": contract.prior_correction, "train": 0.0, "balanced": 1.0}[prior]


def decision_probabilities(out: np.ndarray, contract: ModelContract, prior_correction: float | None = None) -> np.ndarray:
    """Raw outputs -> the probabilities the decision rule reads: softmax(logits / T - tau * log(class prior)).

    ``prior_correction``: tau (None: the contract's own).
    """
    tau = contract.prior_correction if prior_correction is None else prior_correction
    shift = tau * np.log(np.asarray(contract.class_prior, np.float32)) if tau and contract.class_prior else None
    return calibrated_probabilities(out, contract.output, contract.temperature, shift)


def calibrated_probabilities(out: np.ndarray, kind: str = "logits", temperature: float = 1.0,
                             shift: np.ndarray | None = None) -> np.ndarray:
    """A model's raw output (logits, or probabilities) -> softmax(logits / temperature - shift), float32."""
    out = np.asarray(out, dtype=np.float32)
    if kind == "probabilities":
        if temperature == 1.0 and shift is None:
            return out
        out = np.log(np.clip(out, 1e-12, None))
    out = out / np.float32(temperature)
    if shift is not None:
        out = out - shift
    out = out - out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out
