"""What the GPU check's parts share (issue 16): the device's name, timings that wait for the GPU, JSON output.

The parts (gpu_equality.py, gpu_train_bench.py, gpu_inference_bench.py) run as ``python benchmarks/NAME.py``
from benchmarks/gpu_check.sh, so this module and common.py import by name.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import cpu_name, median_ms

REPO = Path(__file__).resolve().parents[1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: torch.device) -> dict:
    """Device, date and versions: the header of every result."""
    env = {"device": str(device), "device_name": device_name(device), "cpu": cpu_name(),
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
           "torch": torch.__version__, "python": platform.python_version(),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", driver=nvidia_driver(),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall milliseconds of ``fn()`` including the GPU work it queued (synchronised after each call)."""
    def call():
        fn()
        sync(device)

    sync(device)
    return median_ms(call, repeats, warmup=warmup)


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class Budget:
    """Seconds a part may still spend; parts check it between cases and record what they skipped."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for two empty or all-zero tensors that are equal)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return diff / max(b.abs().max().item() if b.numel() else 0.0, 1e-30) if diff else 0.0


def reference_export(work: Path, density: float, quick: bool = False) -> Path:
    """export_size.py's reference model (2x650 LSTM, vocabulary 10,000, untied, random weights and masks) at
    ``density``, exported in fp32 (no ONNX graph); ``quick``: the same recipe at 2x32, vocabulary 500."""
    import export_size
    from selfish_deploy.export.writer import export_run
    from selfish_deploy.model import ModelConfig

    out = work / f"reference-{'tiny-' if quick else ''}{density}"
    if (out / "config.json").is_file():
        return out
    saved = export_size.REFERENCE
    if quick:  # write_reference_run reads the module's REFERENCE: a tiny one for the CPU dry run
        export_size.REFERENCE = ModelConfig(arch="lstm", vocab_size=500, emb=32, hidden=32, layers=2,
                                            tie_weights=False)
    try:
        run = export_size.write_reference_run(work / f"run-{out.name}", density)
    finally:
        export_size.REFERENCE = saved
    export_run(run, out, "fp32")
    return out
