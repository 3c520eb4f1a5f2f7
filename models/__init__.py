"""The bundled example model repository (built by models/build.py, `make models`)."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent
