"""``export_run``: masked run weights -> CSR export directory, with a size report."""

from __future__ import annotations

import logging
from pathlib import Path

from ..csr import CSR, DTYPES
from ..errors import UserError
from ..exportdir import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ExportedModel, save_export, write_report
from ..rundir import load_run

log = logging.getLogger(__name__)


def build_export(run_dir: str | Path, dtype: str = "fp32") -> ExportedModel:
    """Encode every masked matrix below density 1.0 as CSR in ``dtype``; biases stay as trained."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    run = load_run(run_dir)
    run.build_model()  # strict check of names and shapes before anything is written
    model = ExportedModel(config={}, model_config=run.model_config, vocab=run.vocab)
    for name, weight in run.weights.items():
        mask = run.masks.get(name)
        if mask is not None and not bool(mask.all()):
            model.sparse[name] = CSR.from_masked(weight, mask, DTYPES[dtype])
        elif weight.dim() == 2:
            model.dense[name] = weight.to(DTYPES[dtype])
        else:
            model.dense[name] = weight
    info = model.tensor_info()
    model.config = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION,
        "model": run.model_config.to_dict(), "vocab_size": len(run.vocab), "dtype": dtype,
        "density": sum(i["nnz"] for n, i in info.items() if len(i["shape"]) == 2)
        / sum(i["shape"][0] * i["shape"][1] for i in info.values() if len(i["shape"]) == 2),
        "density_per_tensor": {n: i["density"] for n, i in info.items() if len(i["shape"]) == 2},
        "source_run": str(Path(run_dir).resolve()), "corpus": run.config.get("corpus", {}),
        "train": run.config.get("train", {}), "results": run.config.get("results", {}),
    }
    return model


def size_report(model: ExportedModel) -> dict:
    """Bytes per tensor dense fp32 vs as stored, and the total compression ratio."""
    rows, dense_total, stored_total = {}, 0, 0
    for n, entry in model.tensor_info().items():
        numel = 1
        for s in entry["shape"]:
            numel *= s
        stored = model.sparse[n].nbytes() if n in model.sparse else \
            model.dense[n].numel() * model.dense[n].element_size()
        rows[n] = {**entry, "bytes_dense_fp32": 4 * numel, "bytes_stored": stored}
        dense_total += 4 * numel
        stored_total += stored
    return {"dtype": model.config.get("dtype"), "tensors": rows, "bytes_dense_fp32": dense_total,
            "bytes_stored": stored_total, "compression_ratio": dense_total / stored_total}


def format_report(report: dict) -> str:
    """The report as a fixed-width table for terminals and logs."""
    head = f"{'tensor':<24} {'shape':>13} {'nnz':>10} {'density':>8} {'per-gate density':<28} {'dense B':>11} {'stored B':>11}"
    lines = [head, "-" * len(head)]
    for n, r in report["tensors"].items():
        gates = " ".join(f"{g:.3f}" for g in r.get("gates", []))
        lines.append(f"{n:<24} {'x'.join(map(str, r['shape'])):>13} {r['nnz']:>10} {r['density']:>8.4f} "
                     f"{gates:<28} {r['bytes_dense_fp32']:>11} {r['bytes_stored']:>11}")
    lines.append("-" * len(head))
    lines.append(f"total: {report['bytes_dense_fp32']} B dense fp32 -> {report['bytes_stored']} B stored "
                 f"({report['dtype']}): {report['compression_ratio']:.2f}x smaller")
    return "\n".join(lines)


def export_run(run_dir: str | Path, out_dir: str | Path, dtype: str = "fp32") -> dict:
    """Write the export directory for ``run_dir`` and return its size report."""
    model = build_export(run_dir, dtype)
    save_export(model, out_dir)
    report = size_report(model)
    write_report(out_dir, report)
    log.info("exported %s -> %s (%.2fx smaller than dense fp32)", run_dir, out_dir, report["compression_ratio"])
    return report
