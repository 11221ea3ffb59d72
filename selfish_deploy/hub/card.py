"""The ``README.md`` model card of an export directory: ``ModelCardData`` metadata plus our template's body.

Every number comes from the export itself (``config.json``, the CSR tensors, the size report), so
``ModelCard.load`` on the card gives back the perplexities of ``config.json`` in its ``model-index``.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data import HUB_SOURCES
from ..errors import UserError
from ..exportdir import ExportedModel
from ..families import ALL, gate_blocks, gate_rows, get_decoder, get_family
from .template import TEMPLATE

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
LIBRARY_NAME = "selfish-deploy"
DEFAULT_LICENSE = "mit"  # the project's license; --license for weights under other terms
DATASET_NAMES = {"ptb": "Penn Treebank", "wikitext-2": "WikiText-2", "ptb-tiny": "PTB (tiny sample)"}
SPLIT_RESULTS = (("validation", "val_ppl"), ("test", "test_ppl"))
# method -> (name, one-line description, tags)
METHODS = {
    "selfish": ("Selfish-RNN", "Fixed number of non-zeros per tensor; at every topology update the "
                "smallest-magnitude weights of the whole gate-stacked matrix die and as many random positions "
                "grow back at zero (Liu et al., ICML 2021).", ["dynamic-sparse-training", "selfish-rnn"]),
    "set": ("SET", "Sign-aware magnitude death and random growth at fixed nnz (Mocanu et al., 2018).",
            ["dynamic-sparse-training", "set"]),
    "rigl": ("RigL", "Magnitude death and growth by the largest dense-gradient magnitude at fixed nnz "
             "(Evci et al., ICML 2020).", ["dynamic-sparse-training", "rigl"]),
    "snfs": ("SNFS", "Sparse momentum: growth shared out by mean momentum magnitude "
             "(Dettmers & Zettlemoyer, 2019).", ["dynamic-sparse-training", "snfs"]),
    "dsr": ("DSR", "Dynamic sparse reparameterization with one global magnitude threshold "
            "(Mostafa & Wang, ICML 2019).", ["dynamic-sparse-training", "dsr"]),
    "static": ("static sparse training", "A random mask at initialisation that never changes.", ["static-sparse"]),
    "gmp": ("gradual magnitude pruning", "Dense to sparse: the smallest weights are pruned on a cubic schedule "
            "and never regrow (Zhu & Gupta, 2017).", ["pruning"]),
    "dense": ("dense training", "No sparsity: every mask is all ones.", []),
}


def dataset_of(corpus: str) -> tuple[str | None, str, str | None]:
    """Corpus name -> (Hub dataset id if the corpus comes from the Hub, display name, dataset config)."""
    source = HUB_SOURCES.get(corpus)
    config = source[2]["train"].split("/")[0] if source and corpus == "wikitext-2" else None
    return (source[0] if source else None), DATASET_NAMES.get(corpus, corpus), config


def read_speed_report(path: str | Path) -> dict:
    """A benchmark JSON ``{"machine", "date", "rows": [{"case", "ours_ms", "dense_ms", "speedup"}]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"speed report not found: {path}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable JSON file: {e}") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(data.get(k), str) for k in ("machine", "date")):
        raise UserError(f"{path}: a speed report is an object with 'machine', 'date' and a non-empty 'rows' list")
    for i, row in enumerate(rows):
        try:
            float(row["ours_ms"]), float(row["dense_ms"]), float(row["speedup"]), str(row["case"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: rows[{i}] needs 'case' and numeric 'ours_ms', 'dense_ms', 'speedup'") from None
    return {"machine": data["machine"], "date": data["date"],
            "rows": [{"case": str(r["case"]), **{k: float(r[k]) for k in ("ours_ms", "dense_ms", "speedup")}}
                     for r in rows]}


def train_command(train: dict) -> str | None:
    """``selfish-train`` with every resolved setting as its flag (kebab-case flag = config key)."""
    if "out" not in train:  # not a resolved config: the flags would not reproduce the run
        return None
    groups = [["selfish-train"]]
    flat = {k: v for k, v in train.items() if k != "options"}
    flat.update(train.get("options") or {})  # family/decoder options are flags like any other key
    for key, value in flat.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if key != "dry_run" or value:
                groups.append([flag if value else "--no-" + flag[2:]])
        elif isinstance(value, (list, tuple)):  # nargs="+" flags; an empty list is the default: no flag
            if value:
                groups.append([flag, *map(str, value)])
        elif value is not None:
            groups.append([flag, str(value)])
    return " \\\n    ".join(" ".join(shlex.quote(a) for a in g) for g in groups)


def _gate_rows(model: ExportedModel) -> list[dict]:
    """nnz, density and stored bytes of every gate block (the family's row blocks) of every weight matrix."""
    cfg, rows = model.model_config, []
    for name in sorted([*model.sparse, *(n for n, t in model.dense.items() if t.dim() == 2)]):
        labels = gate_blocks(name, cfg)
        labels = labels if len(labels) > 1 else ALL  # one block: the whole matrix
        g = len(labels)
        shape = model.sparse[name].shape if name in model.sparse else model.dense[name].shape
        per_block = (gate_rows(name, cfg) if g > 1 else None) or [shape[0] // g] * g  # unequal: ON-LSTM
        n_cols = shape[1]
        if name in model.sparse:
            csr = model.sparse[name]
            per_entry = csr.values.element_size() + csr.col_indices.element_size()
            blocks = [int(b.sum()) for b in csr.mask().split(list(per_block), dim=0)]
            sizes = [n * per_entry + r * csr.crow_indices.element_size() for n, r in zip(blocks, per_block)]
        else:
            t = model.dense[name]
            blocks = [r * n_cols for r in per_block]
            sizes = [r * n_cols * t.element_size() for r in per_block]
        for label, n_rows, nnz, size in zip(labels, per_block, blocks, sizes):
            rows.append({"tensor": name, "gate": label, "rows": n_rows, "nnz": nnz, "size": n_rows * n_cols,
                         "density": nnz / (n_rows * n_cols), "bytes": size})
    return rows


def _gate_text(gates: list[dict], method: str, labels: dict[str, str]) -> str:
    recurrent = [g for g in gates if g["gate"] != "all"]
    if not recurrent:
        return "The cell has one gate: each matrix is one block."
    mean = {}
    for g in recurrent:
        nnz, size = mean.get(g["gate"], (0, 0))
        mean[g["gate"]] = (nnz + g["nnz"], size + g["size"])
    summary = ", ".join(f"{labels.get(k, k)} **{n / s:.3f}**" for k, (n, s) in mean.items())
    if method == "selfish":
        why = ("Selfish-RNN's *cell gate redistribution* (§3.2 of the paper): weights die by magnitude over the "
               "whole gate-stacked matrix, so the gates compete and density moves to the gates that need it, "
               "while each tensor keeps its number of non-zeros.")
    elif method in ("static", "dense"):
        why = "The masks never changed during training, so the gates keep the density they started with."
    else:
        why = "Topology updates work on the whole gate-stacked matrix, so the gates' densities can drift apart."
    return f"{why} Density per gate over all recurrent matrices: {summary}."


def _optimizer_text(train: dict) -> str:
    opt = train.get("optimizer")
    lr = train.get("lr")
    if opt == "snt-asgd":
        after = train.get("asgd_after")
        return (f"SNT-ASGD (Selfish-RNN's sparse NT-ASGD): SGD at lr {lr}, switching to a masked running "
                f"average of the weights when validation is worse than the best before the last "
                f"{train.get('nonmono')} epochs (AWD-LSTM's non-monotonic trigger)"
                + (f", or after epoch {after} at the latest" if after is not None else "")
                + f"; gradient clipping {train.get('clip')}.")
    if opt == "sgd":
        return (f"SGD at lr {lr}, divided by {train.get('anneal')} when validation does not improve; "
                f"gradient clipping {train.get('clip')}.")
    return f"{opt or 'not recorded'}."


def card_context(model: ExportedModel, report: dict, repo_id: str | None = None, plots: list[str] = (),
                 speed: dict | None = None) -> dict:
    """Everything the template shows, computed from the export."""
    cfg, mc = model.config, model.model_config
    family, head = get_family(mc.arch), get_decoder(mc.decoder)
    train, corpus = cfg.get("train") or {}, (cfg.get("corpus") or {}).get("name") or ""
    method = train.get("method", "")
    _, dataset_name, _ = dataset_of(corpus)
    matrices = {n: r for n, r in report["tensors"].items() if len(r["shape"]) == 2}
    gates = _gate_rows(model)
    results = [{"split": split, "split_name": split.capitalize(), "value": float(cfg["results"][key])}
               for split, key in SPLIT_RESULTS if (cfg.get("results") or {}).get(key) is not None]
    gate_plot = "plots/gate_density.png" if "plots/gate_density.png" in plots else None
    corpus_text = (f"Trained and evaluated on {dataset_name} (`{corpus}`"
                   + (f", from {(cfg.get('corpus') or {}).get('source')}" if (cfg.get("corpus") or {}).get("source")
                      and corpus not in HUB_SOURCES else "")
                   + ").") if corpus else "The corpus is not recorded."
    return {
        "title": repo_id.split("/")[-1] if repo_id else f"Sparse {family.title} language model"
        + (f" ({dataset_name}, density {float(cfg.get('density', 1.0)):.2f})" if corpus else ""),
        "repo_id": repo_id or "NS/NAME", "arch": mc.arch, "arch_name": family.title, "layers": mc.layers,
        "decoder": mc.decoder, "decoder_name": head.title, "experts": mc.experts, "options": mc.options,
        "emb": mc.emb, "hidden": mc.hidden, "vocab_size": mc.vocab_size, "tie_weights": mc.tie_weights,
        "dropout": mc.dropout, "dtype": cfg.get("dtype", "fp32"), "density": float(cfg.get("density", 1.0)),
        "nnz": sum(r["nnz"] for r in matrices.values()),
        "matrix_weights": sum(r["shape"][0] * r["shape"][1] for r in matrices.values()),
        "bytes_stored": report["bytes_stored"], "bytes_dense": report["bytes_dense_fp32"],
        "compression": report["compression_ratio"],
        "layout_text": family.layout_text,
        "tensors": [{"name": n, "shape": "x".join(map(str, r["shape"])), "layout": r["layout"], "nnz": r["nnz"],
                     "density": r["density"], "bytes_stored": r["bytes_stored"], "bytes_dense": r["bytes_dense_fp32"]}
                    for n, r in report["tensors"].items()],
        "gates": gates, "gate_text": _gate_text(gates, method, family.gate_labels), "gate_plot": gate_plot,
        "other_plots": [p for p in plots if p != gate_plot],
        "method": method or "not recorded", "method_name": METHODS.get(method, (method or "unknown",))[0],
        "method_text": METHODS.get(method, ("", ""))[1], "optimizer": train.get("optimizer"),
        "optimizer_text": _optimizer_text(train), "weights": cfg.get("weights") or None,
        "train_rows": [] if train_command(train) else [(k, v) for k, v in train.items() if v not in (None, {})],
        "command": train_command(train),
        "corpus": corpus, "corpus_text": corpus_text, "dataset_name": dataset_name, "results": results,
        "bptt": train.get("bptt"), "eval_batch_size": train.get("eval_batch_size"),
        "test_batch_size": train.get("test_batch_size"), "speed": speed,
    }


def card_data(model: ExportedModel, repo_id: str | None = None, license: str = DEFAULT_LICENSE) -> ModelCardData:
    """YAML metadata: library, license, language, task, tags, datasets and the ``model-index``."""
    cfg, arch = model.config, model.model_config.arch
    train, corpus = cfg.get("train") or {}, (cfg.get("corpus") or {}).get("name") or ""
    dataset_id, dataset_name, dataset_config = dataset_of(corpus)
    method_tags = METHODS.get(train.get("method"), ("", "", []))[2]
    family = get_family(arch)
    tags = [*(family.tags or (family.name.replace("_", "-"),)), "rnn", "language-modeling", *(["sparse"] if cfg.get("density", 1.0) < 1 else []),
            *method_tags, LIBRARY_NAME]
    evals = [EvalResult(task_type="text-generation", task_name="Language modeling",
                        dataset_type=dataset_id or corpus, dataset_name=dataset_name, dataset_config=dataset_config,
                        dataset_split=split, metric_type="perplexity", metric_name=f"{split} perplexity",
                        metric_value=float(cfg["results"][key]))
             for split, key in SPLIT_RESULTS if corpus and (cfg.get("results") or {}).get(key) is not None]
    return ModelCardData(
        library_name=LIBRARY_NAME, license=license, pipeline_tag="text-generation",
        language="en" if corpus in DATASET_NAMES else None, tags=list(dict.fromkeys(tags)),
        datasets=[dataset_id] if dataset_id else None, eval_results=evals or None,
        model_name=(repo_id or f"selfish-deploy-{arch}-{corpus or 'lm'}") if evals else None,
    )


def build_card(model: ExportedModel, report: dict, repo_id: str | None = None, plots: list[str] = (),
               speed: dict | None = None, license: str = DEFAULT_LICENSE) -> ModelCard:
    return ModelCard.from_template(card_data(model, repo_id, license), template_str=TEMPLATE,
                                   **card_context(model, report, repo_id, list(plots), speed))


def write_card(export_dir: str | Path, model: ExportedModel, report: dict, repo_id: str | None = None,
               speed: dict | None = None, license: str = DEFAULT_LICENSE) -> Path:
    """Render the card for the export in ``export_dir`` (its ``plots/`` included) into ``README.md``."""
    out = Path(export_dir)
    plots = sorted(p.relative_to(out).as_posix() for p in (out / "plots").glob("*.png")) \
        if (out / "plots").is_dir() else []
    card = build_card(model, report, repo_id, plots, speed, license)
    card.save(out / CARD_FILE)
    log.info("wrote the model card %s", out / CARD_FILE)
    return out / CARD_FILE
