"""Training and evaluation of facial expression classifiers (needs the [train] extra)."""

from fer_train.models import create_model, list_models

__all__ = ["create_model", "list_models"]
