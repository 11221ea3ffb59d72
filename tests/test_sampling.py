"""Batched sampling: what top-k and top-p keep, the distributions they sample (chi-square with fixed seeds),
greedy, temperature, repetition penalty, and per-row seeds independent of the batch."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from selfish_deploy.errors import UserError
from selfish_deploy.runtime.sampling import SamplingParams, filtered_logits, make_generator, sample

V = 12
LOGP = torch.log_softmax(torch.tensor([2.0, 1.5, 1.0, 0.5, 0.3, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0]), -1)
PERM = torch.tensor([5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 6, 8])  # the same distribution, tokens shuffled


def kept(params: SamplingParams, logp=LOGP) -> set[int]:
    sorted_logits, order = filtered_logits(logp.view(1, -1), [params])
    return set(order[0][sorted_logits[0] > float("-inf")].tolist())


def test_top_k_keeps_the_k_most_likely():
    logp = LOGP[PERM.argsort()]  # token PERM[i] has the i-th largest probability
    for k in (1, 3, 11):
        assert kept(SamplingParams(top_k=k), logp) == set(PERM[:k].tolist())
    assert kept(SamplingParams(top_k=0), logp) == set(range(V))


def test_top_p_keeps_the_smallest_nucleus():
    probs = LOGP.exp()
    for p in (0.05, 0.3, 0.5, 0.9, 0.999):
        n = int((torch.cumsum(probs, 0) < p).sum()) + 1  # the smallest prefix reaching p
        assert kept(SamplingParams(top_p=p)) == set(range(n)), p
    assert kept(SamplingParams(top_p=1.0)) == set(range(V))


def draw(params: SamplingParams, n: int, seed: int = 0, logp=LOGP) -> torch.Tensor:
    g = make_generator(seed)
    rows = logp.view(1, -1).expand(n, -1).contiguous()
    gens = [g] * n  # one generator drawing n times: independent draws
    return sample(rows, [params] * n, gens)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7), SamplingParams(top_k=4),
                                    SamplingParams(top_p=0.8), SamplingParams(temperature=1.5, top_k=6, top_p=0.95)])
def test_sampled_distribution_matches_the_filtered_one(params, n=20_000):
    tokens = draw(params, n, seed=1)
    sorted_logits, order = filtered_logits(LOGP.view(1, -1), [params])
    expected = torch.zeros(V)
    expected[order[0]] = torch.softmax(sorted_logits[0], -1)
    counts = torch.bincount(tokens, minlength=V).float()
    assert counts[expected == 0].sum() == 0  # nothing outside the kept set
    keep = expected > 0
    _, pvalue = chisquare(counts[keep].numpy(), (expected[keep] * n).numpy())
    assert pvalue > 1e-3, (counts, expected * n)


def test_greedy_is_the_argmax_whatever_the_filters():
    logp = LOGP[PERM.argsort()]
    tokens = draw(SamplingParams(temperature=0, top_k=3, top_p=0.5), 5, logp=logp)
    assert tokens.tolist() == [int(PERM[0])] * 5


def test_each_row_uses_its_own_parameters():
    rows = LOGP.view(1, -1).expand(4, -1).contiguous()
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1), SamplingParams(top_p=1e-6),
              SamplingParams(temperature=0.01)]
    tokens = sample(rows, params, [make_generator(i) for i in range(4)])
    assert tokens.tolist() == [0, 0, 0, 0]


def test_a_rows_sample_depends_on_its_seed_not_on_the_batch():
    alone = [sample(LOGP.view(1, -1), [SamplingParams()], [make_generator(42)]).item()]
    others = torch.log_softmax(torch.randn(4, V, generator=torch.Generator().manual_seed(0)), -1)
    batch = torch.cat([others[:2], LOGP.view(1, -1), others[2:]])
    params = [SamplingParams(top_k=3), SamplingParams(temperature=2.0), SamplingParams(), SamplingParams(top_p=0.5),
              SamplingParams()]
    gens = [make_generator(s) for s in (1, 2, 42, 3, 4)]
    assert sample(batch, params, gens)[2].item() == alone[0]


def test_repetition_penalty_lowers_seen_tokens():
    seen = torch.zeros(1, V, dtype=torch.bool)
    seen[0, 0] = True
    sorted_logits, order = filtered_logits(LOGP.view(1, -1), [SamplingParams(repetition_penalty=2.0)], seen)
    logits = torch.empty(V)
    logits[order[0]] = sorted_logits[0]
    assert logits[0] == pytest.approx(2.0 * LOGP[0].item())  # a log-probability (< 0) is multiplied
    assert torch.equal(logits[1:], LOGP[1:])
    # greedy picks the next token once the first one is penalised enough
    assert sample(LOGP.view(1, -1), [SamplingParams(temperature=0, repetition_penalty=3.0)], [make_generator(0)],
                  seen).item() == 1


def test_logit_bias_shifts_a_tokens_odds_by_its_exponential():
    """A bias b multiplies a token's odds against the rest by e^b (p -> p e^b / (1 - p + p e^b)), before the
    other filters, and leaves the log-probabilities it is given untouched."""
    b, tok = 1.2, 3
    params = SamplingParams(logit_bias={tok: b})
    logp = LOGP.clone()
    n = 6_000
    tokens = draw(params, n, seed=2, logp=logp)
    assert torch.equal(logp, LOGP)
    p = LOGP.exp()
    expected = p.clone()
    expected[tok] = p[tok] * torch.exp(torch.tensor(b))
    expected /= expected.sum()
    _, pvalue = chisquare(torch.bincount(tokens, minlength=V).float().numpy(), (expected * n).numpy())
    assert pvalue > 1e-3
    sorted_logits, order = filtered_logits(LOGP.view(1, -1), [params])  # the reference filter sees it too
    assert sorted_logits[0][(order[0] == tok).nonzero()].item() == pytest.approx(LOGP[tok].item() + b)


def test_logit_bias_forces_and_bans_tokens_in_every_mode():
    for mode in (dict(temperature=0), dict(), dict(top_k=2), dict(top_p=0.5)):
        assert set(draw(SamplingParams(logit_bias={9: 100}, **mode), 50).tolist()) == {9}, mode
        banned = draw(SamplingParams(logit_bias={0: -100, 1: -100}, **mode), 500).tolist()
        assert 0 not in banned and 1 not in banned, mode
    # per row: the other rows of a batch are not biased
    rows = LOGP.view(1, -1).expand(2, -1).contiguous()
    greedy = [SamplingParams(temperature=0, logit_bias=[(11, 100.0)]), SamplingParams(temperature=0)]
    assert sample(rows, greedy, [make_generator(0)] * 2).tolist() == [11, 0]


def test_presence_and_frequency_penalties_lower_generated_tokens_by_count():
    counts = torch.zeros(1, V)
    counts[0, 0], counts[0, 2] = 3, 1
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    sorted_logits, order = filtered_logits(LOGP.view(1, -1), [params], counts=counts)
    logits = torch.empty(V)
    logits[order[0]] = sorted_logits[0]
    assert logits[0].item() == pytest.approx(LOGP[0].item() - 0.25 * 3 - 0.5)
    assert logits[2].item() == pytest.approx(LOGP[2].item() - 0.25 - 0.5)
    others = [i for i in range(V) if i not in (0, 2)]
    assert torch.equal(logits[others], LOGP[others])
    # the draws follow the penalised distribution
    n = 6_000
    rows = LOGP.view(1, -1).expand(n, -1).contiguous()
    tokens = sample(rows, [params] * n, [make_generator(4)] * n, counts=counts.expand(n, -1))
    expected = torch.softmax(logits, -1) * n
    _, pvalue = chisquare(torch.bincount(tokens, minlength=V).float().numpy(), expected.numpy())
    assert pvalue > 1e-3


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_tokens=-1), dict(repetition_penalty=0), dict(seed=-1),
                                 dict(logit_bias={1: 101}), dict(logit_bias={-1: 1.0}), dict(logit_bias={"1": 1.0}),
                                 dict(logit_bias={1: float("nan")}), dict(presence_penalty=2.5),
                                 dict(frequency_penalty=-3)])
def test_invalid_parameters_are_user_errors(bad):
    with pytest.raises(UserError):
        SamplingParams(**bad)


def test_a_wide_nucleus_grows_past_the_first_candidates():
    """top-p without top-k starts from 64 candidates and widens: here the nucleus holds ~180 of 400 tokens."""
    logp = torch.log_softmax(torch.linspace(0.0, -1.0, 400), -1)
    params = SamplingParams(top_p=0.5)
    sorted_logits, order = filtered_logits(logp.view(1, -1), [params])
    expected = torch.zeros(400)
    expected[order[0]] = torch.softmax(sorted_logits[0], -1)
    assert int((expected > 0).sum()) > 64
    n = 40_000
    tokens = draw(params, n, seed=3, logp=logp)
    counts = torch.bincount(tokens, minlength=400).float()
    assert counts[expected == 0].sum() == 0
    keep = expected > 0
    _, pvalue = chisquare(counts[keep].numpy(), (expected[keep] * n).numpy())
    assert pvalue > 1e-3


def test_min_p_keeps_the_tokens_within_a_factor_of_the_most_likely():
    probs = LOGP.exp()
    for min_p in (0.05, 0.3, 0.9):
        assert kept(SamplingParams(min_p=min_p)) == {i for i in range(V) if probs[i] >= min_p * probs[0]}, min_p
    hot = SamplingParams(min_p=0.3, temperature=2.0)  # after temperature, as vLLM: a flatter ratio keeps more
    flat = torch.softmax(LOGP / 2.0, -1)
    assert kept(hot) == {i for i in range(V) if flat[i] >= 0.3 * flat[0]}
    assert len(kept(hot)) > len(kept(SamplingParams(min_p=0.3)))


@pytest.mark.parametrize("params", [SamplingParams(min_p=0.1), SamplingParams(min_p=0.2, top_k=3),
                                    SamplingParams(min_p=0.05, top_p=0.7, temperature=1.3)])
def test_min_p_draws_follow_the_filtered_distribution(params):
    test_sampled_distribution_matches_the_filtered_one(params, n=6_000)
