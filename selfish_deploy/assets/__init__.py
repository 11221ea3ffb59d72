"""Files shipped inside the package: the embedded default model (an export directory)."""

from pathlib import Path

DEFAULT_MODEL = "ptb-lstm-sparse"


def default_model_dir() -> Path:
    """Export directory of the bundled sparse PTB model (see README for how it was trained)."""
    return Path(__file__).parent / DEFAULT_MODEL
