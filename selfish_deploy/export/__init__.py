"""Turn a run directory into an export directory (CSR safetensors, and ONNX with ``--onnx``)."""

from .writer import export_run

__all__ = ["export_run"]
