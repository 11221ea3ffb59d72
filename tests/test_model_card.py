"""The README.md model card: ``ModelCard.load`` parses it, its model-index holds config.json's numbers, and its
body shows what the export holds (per-gate density, the plots, the exact command, a speed report)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from selfish_deploy.assets import default_model_dir
from selfish_deploy.export.cli import main as export_main
from selfish_deploy.exportdir import load_export

SPEED = {"machine": "AMD EPYC (2 cores), torch 2.13.0+cpu, 1 thread", "date": "2026-11-23 19:15 UTC",
         "rows": [{"case": "score 1x200 tokens", "ours_ms": 54.4, "dense_ms": 18.31, "speedup": 0.34},
                  {"case": "generate step (1 token)", "ours_ms": 1.36, "dense_ms": 2.1, "speedup": 1.54}]}


def eval_numbers(card: ModelCard) -> dict[str, float]:
    return {r.dataset_split: r.metric_value for r in card.data.eval_results if r.metric_type == "perplexity"}


def gate_rows(text: str) -> dict[tuple[str, str], tuple[int, float]]:
    """(tensor, gate) -> (nnz, density) from the card's per-gate table."""
    rows = re.findall(r"^\| `([\w.]+)` \| (\w+) \| \d+ \| ([\d,]+) \| ([\d.]+) \| [\d,]+ \|$", text, re.M)
    return {(t, g): (int(n.replace(",", "")), float(d)) for t, g, n, d in rows}


def test_card_of_a_trained_export(tiny_run, tiny_export):
    card = ModelCard.load(tiny_export / "README.md")
    config = json.loads((tiny_export / "config.json").read_text())
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license, data.language) == \
        ("selfish-deploy", "text-generation", "mit", "en")
    assert {"lstm", "rnn", "sparse", "static-sparse"} <= set(data.tags)
    assert eval_numbers(card) == {"validation": config["results"]["val_ppl"], "test": config["results"]["test_ppl"]}
    assert {r.dataset_type for r in data.eval_results} == {"ptb-tiny"}

    # per gate: the numbers of the CSR masks
    exported = load_export(tiny_export)
    rows = gate_rows(card.text)
    for name, csr in exported.sparse.items():
        gates = ("i", "f", "g", "o") if name.startswith("rnns.") else ("all",)
        for gate, block in zip(gates, csr.mask().chunk(len(gates), dim=0)):
            assert rows[(name, gate)][0] == int(block.sum())
            assert rows[(name, gate)][1] == pytest.approx(float(block.float().mean()), abs=5e-5)

    # the run's plots travel with the export, and the card shows the gate-density one
    plots = sorted(p.name for p in (tiny_run / "plots").glob("*.png"))
    assert "gate_density.png" in plots
    assert sorted(p.name for p in (tiny_export / "plots").iterdir()) == plots
    assert all((tiny_export / "plots" / p).read_bytes() == (tiny_run / "plots" / p).read_bytes() for p in plots)
    assert "![density of every gate over training](plots/gate_density.png)" in card.text

    # the exact command: parsed by selfish-train, it resolves to the run's config
    from selfish_deploy.training.cli import build_parser, resolve

    command = re.search(r"```bash\n(selfish-train .*?)\n```", card.text, re.S).group(1)
    argv = shlex.split(command.replace("\\\n", " "))
    resolved, _ = resolve(build_parser().parse_args(argv[1:]))
    assert resolved.to_dict() == config["train"]
    assert "No benchmark result was given" in card.text


def test_speed_report_repo_id_and_license(make_run, tmp_path, capsys):
    report = tmp_path / "speed.json"
    report.write_text(json.dumps(SPEED))
    out = tmp_path / "export"
    assert export_main([str(make_run()), "--out", str(out), "--speed-report", str(report), "--repo-id", "ns/tiny",
                        "--license", "apache-2.0"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert "| score 1x200 tokens | 54.400 | 18.310 | 0.34x |" in card.text
    assert "| generate step (1 token) | 1.360 | 2.100 | 1.54x |" in card.text
    assert SPEED["machine"] in card.text and SPEED["date"] in card.text
    assert 'SparseLM.from_pretrained("ns/tiny")' in card.text and "selfish-serve --model ns/tiny" in card.text
    assert card.data.eval_results is None  # a synthetic run has no perplexity: no model-index at all
    capsys.readouterr()

    bad = tmp_path / "bad.json"
    for content, fragment in [({"rows": []}, "'machine', 'date'"),
                              ({**SPEED, "rows": [{"case": "x", "ours_ms": "fast"}]}, "rows[0]")]:
        bad.write_text(json.dumps(content))
        assert export_main([str(make_run()), "--out", str(tmp_path / "e2"), "--speed-report", str(bad)]) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, err
    assert export_main([str(make_run()), "--out", str(tmp_path / "e2"), "--speed-report", "nope.json"]) == 2
    assert "speed report not found" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()  # refused before anything was written


def test_bundled_model_has_a_card_and_a_manifest(caplog):
    d = default_model_dir()
    caplog.clear()
    exported = load_export(d)  # the manifest is checked: no warning about it
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    card = ModelCard.load(d / "README.md")
    config = exported.config
    assert eval_numbers(card) == {"validation": config["results"]["val_ppl"], "test": config["results"]["test_ppl"]}
    assert card.data.datasets == ["ptb-text-only/ptb_text_only"]
    assert {"lstm", "sparse", "selfish-rnn", "dynamic-sparse-training"} <= set(card.data.tags)
    assert "cell gate redistribution" in card.text and "SNT-ASGD" in card.text
    # the redistribution the paper is about: the cell gate keeps more weights than the forget gate
    rows = gate_rows(card.text)
    for layer in (0, 1):
        for kind in ("ih", "hh"):
            name = f"rnns.{layer}.weight_{kind}_l0"
            assert rows[(name, "g")][1] > rows[(name, "f")][1]
    assert Path(d / "manifest.json").is_file()


def test_card_states_each_splits_evaluation_batch_size(tiny_export):
    from selfish_deploy.exportdir import read_report
    from selfish_deploy.hub.card import build_card

    exported, report = load_export(tiny_export), read_report(tiny_export)
    train = exported.config.setdefault("train", {})
    train.update(eval_batch_size=10, test_batch_size=1)  # ON-LSTM's protocol
    text = " ".join(build_card(exported, report).text.split())
    assert "batched into 10 columns (test: 1)" in text
    train.update(test_batch_size=10)
    assert "(test:" not in build_card(exported, report).text


def test_train_command_round_trips_list_settings():
    """A list setting (--asgd-restarts) becomes its flag with every value; an empty one, its default, none."""
    from selfish_deploy.hub.card import train_command
    from selfish_deploy.training.cli import build_parser, resolve
    from selfish_deploy.training.config import TrainConfig

    for restarts in ([500, 1000], []):
        config = TrainConfig(asgd_restarts=restarts, out="runs/x").to_dict()
        command = train_command(config)
        assert ("--asgd-restarts 500 1000" in command) == bool(restarts)
        argv = shlex.split(command.replace("\\\n", " "))
        resolved, _ = resolve(build_parser().parse_args(argv[1:]))
        assert resolved.to_dict() == config
