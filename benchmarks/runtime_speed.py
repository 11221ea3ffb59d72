"""Scoring and generation speed: dense PyTorch model vs the sparse runtime, side by side in one process.

    python benchmarks/runtime_speed.py [--model EXPORT_DIR] [--threads 1] [--repeats 5]

Both compute the same log-probabilities (checked first). Prints milliseconds per call and the ratio
dense / sparse (> 1 means the sparse runtime is faster). Default model: the bundled one.
"""

from __future__ import annotations

import argparse
from datetime import date

import torch

from common import cpu_name, median_ms
from selfish_deploy.assets import default_model_dir
from selfish_deploy.csr import CSR
from selfish_deploy.model import RNNLM
from selfish_deploy.runtime import SparseLM


def dense_model(lm: SparseLM) -> RNNLM:
    """The same weights as a dense ``RNNLM`` (CSR expanded), the baseline."""
    model = RNNLM(lm.config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            w = lm.exported.weight(n)
            p.copy_(w.to_dense(torch.float32) if isinstance(w, CSR) else w.float())
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(default_model_dir()))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = SparseLM.load(args.model)
    model = dense_model(lm)
    torch.manual_seed(0)
    V = len(lm.vocab)

    cases = {
        "score 1x200 tokens": torch.randint(0, V, (200, 1)),
        "score 16x35 tokens": torch.randint(0, V, (35, 16)),
        "generate step (1 token)": torch.randint(0, V, (1, 1)),
    }
    rows = []
    for name, tokens in cases.items():
        with torch.inference_mode():
            ref = torch.log_softmax(model(tokens, model.init_hidden(tokens.size(1)))[0], -1)
            out, _ = lm.forward(tokens, lm.init_state(tokens.size(1)))
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            t_dense = median_ms(lambda: torch.log_softmax(model(tokens, model.init_hidden(tokens.size(1)))[0], -1),
                            args.repeats)
            t_sparse = median_ms(lambda: lm.forward(tokens, lm.init_state(tokens.size(1))), args.repeats)
        rows.append((name, t_dense, t_sparse, t_dense / t_sparse, err))

    density = lm.exported.config.get("density", 1.0)
    print(f"# runtime speed, {date.today()}, {cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"# model {args.model}: {lm.config.arch} {lm.config.layers}x{lm.config.hidden}, vocab {V}, "
          f"density {density:.3f}")
    print("| case | dense PyTorch ms | sparse runtime ms | dense/sparse | max rel. error |")
    print("|---|---:|---:|---:|---:|")
    for name, d, s, r, e in rows:
        print(f"| {name} | {d:.2f} | {s:.2f} | {r:.2f}x | {e:.1e} |")


if __name__ == "__main__":
    main()
