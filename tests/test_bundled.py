"""The embedded default model: small, sparse, a trained PTB model, and what `make demo` serves."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

from selfish_deploy.assets import default_model_dir
from selfish_deploy.data import find_split_files
from selfish_deploy.runtime import SparseLM


def test_bundled_model_is_small_sparse_and_good_enough():
    d = default_model_dir()
    size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    assert size <= 10 * 2**20, f"{size} bytes"
    config = json.loads((d / "config.json").read_text())
    assert config["format"] == "selfish-export" and config["model"]["arch"] == "lstm"
    assert 0.25 <= config["density"] <= 0.33 + 1e-6
    assert config["results"]["test_ppl"] <= 160
    assert config["model"]["vocab_size"] == 10_000


def test_bundled_model_scores_ptb_like_a_trained_model(data_dir):
    """Perplexity recomputed by the runtime on the start of the PTB test split: a trained model, not noise
    (a uniform guess is 10,000; the recorded full-split value is 106.0, scored as one stream)."""
    lm = SparseLM.load(default_model_dir())
    text = find_split_files(data_dir, "ptb")["test"].read_text().splitlines()[:60]
    scores = [lm.score(line) for line in text if line.strip()]
    nll = -sum(s.log_likelihood for s in scores) / sum(len(s.logprobs) for s in scores)
    assert math.exp(nll) < 125  # 110.5 measured (each line from a fresh state)


def test_demo_serves_scores_and_generates():
    out = subprocess.run([sys.executable, "-m", "selfish_deploy.serving.demo"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    ppl = float(re.search(r"perplexity: ([0-9.]+)", out.stdout).group(1))
    assert 1 < ppl < 2000
    continued = re.search(r"continued:  ([\s\S]*?)\n\n", out.stdout).group(1)
    # 25 sampled tokens; each <eos> is printed as a line break, every other token as a word
    assert len(continued.split()) + continued.count("\n") == 25
    assert "server stopped" in out.stderr
