"""Corpus loading in the AWD-LSTM convention, checked against the published token counts."""

from __future__ import annotations

import pytest
import torch

from selfish_deploy.data import batchify, get_batch, load_corpus
from selfish_deploy.errors import UserError


@pytest.mark.parametrize("corpus,counts,vocab", [
    ("ptb", (929_589, 73_760, 82_430), 10_000),
    ("wikitext-2", (2_088_628, 217_646, 245_569), 33_278),
    ("ptb-tiny", (44_328, 4_722, 4_266), 5_457),
])
def test_published_counts(data_dir, corpus, counts, vocab):
    c = load_corpus(corpus, data_dir)
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == counts
    assert len(c.vocab) == vocab
    assert c.train[-1].item() == c.vocab.eos_id  # every line ends in <eos>


def test_env_var_and_direct_directory(data_dir, monkeypatch):
    monkeypatch.setenv("SELFISH_DATA_DIR", str(data_dir / "ptb-tiny"))
    c = load_corpus("ptb-tiny")
    assert c.train.numel() == 44_328
    # ptb.{train,valid,test}.txt naming, given the directory itself
    assert load_corpus("ptb", data_dir / "ptb").valid.numel() == 73_760


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no corpus files"):
        load_corpus("ptb", tmp_path)


def test_batchify_and_get_batch_layout():
    data = torch.arange(26)
    b = batchify(data, 4)  # 6 rows of 4 columns, last 2 tokens dropped
    assert b.shape == (6, 4)
    assert b[:, 1].tolist() == list(range(6, 12))  # each column is a contiguous slice
    x, y = get_batch(b, 0, 2)
    assert x.tolist() == [[0, 6, 12, 18], [1, 7, 13, 19]]
    assert y.tolist() == [[1, 7, 13, 19], [2, 8, 14, 20]]
    x, y = get_batch(b, 4, 35)  # the last window is shorter
    assert x.shape == (1, 4) and y[0].tolist() == [5, 11, 17, 23]
