"""llmpipe: the journey of "Build a Large Language Model (From Scratch)" as a reproducible HF pipeline."""

__version__ = "0.1.0"
