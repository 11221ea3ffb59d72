"""Turn a run directory into an export directory (CSR safetensors, and ONNX with ``--onnx``)."""

from .onnx_graph import build_onnx
from .onnx_runner import OnnxLM
from .writer import build_export, export_run

__all__ = ["build_export", "export_run", "build_onnx", "OnnxLM"]
