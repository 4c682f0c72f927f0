"""Models shipped with the package (installed as ``fer_models``)."""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
