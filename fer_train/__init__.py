"""Training and evaluation of facial expression classifiers (needs the [train] extra).

Importing the package itself needs no torch, so its console entry points (``fer_train.entry``) can say
which extra to install in a runtime-only environment.
"""

__all__ = ["create_model", "list_models"]


def __getattr__(name: str):
    if name in __all__:
        from fer_train import models

        return getattr(models, name)
    raise AttributeError(f"module 'fer_train' has no attribute {name!r}")
