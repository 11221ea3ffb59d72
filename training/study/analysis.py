"""Statistics of the graph study: correlation of accuracy with each property, and cross-validated regression."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def correlations(features: dict[str, np.ndarray], target: np.ndarray) -> list[dict]:
    """Pearson and Spearman correlation (with two-sided p-values) of ``target`` with every feature; NaN where a
    feature or the target is constant (a correlation is undefined there), sorted by |Pearson r|."""
    target = np.asarray(target, dtype=float)
    rows = []
    for name, x in features.items():
        x = np.asarray(x, dtype=float)
        row = {"property": name, "n": len(x), "pearson_r": math.nan, "pearson_p": math.nan,
               "spearman_r": math.nan, "spearman_p": math.nan}
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(target) > 0:
            pr = stats.pearsonr(x, target)
            sr = stats.spearmanr(x, target)
            row.update(pearson_r=float(pr.statistic), pearson_p=float(pr.pvalue),
                       spearman_r=float(sr.statistic), spearman_p=float(sr.pvalue))
        rows.append(row)
    return sorted(rows, key=lambda r: -abs(r["pearson_r"]) if not math.isnan(r["pearson_r"]) else 0.0)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Weights and intercept minimising |y - x w - b|^2 + alpha |w|^2 (the intercept is not penalised)."""
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    w = np.linalg.lstsq(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc, rcond=None)[0]
    return w, float(ym - xm @ w)


AUTO = -1.0  # alpha: choose it inside every training fold by leave-one-out (``loo_alpha``)
ALPHA_GRID = tuple(10.0 ** np.linspace(-3, 3, 13))


def loo_alpha(x: np.ndarray, y: np.ndarray, grid=ALPHA_GRID) -> float:
    """The ridge penalty in ``grid`` with the smallest exact leave-one-out squared error (closed form: residual
    / (1 - leverage), leverage = 1/n for the intercept + the diagonal of the centred ridge hat matrix)."""
    xc, yc = x - x.mean(0), y - y.mean()
    n, d = xc.shape
    best, best_err = grid[0], math.inf
    for alpha in grid:
        hat = xc @ np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T)
        resid = (yc - hat @ yc) / np.maximum(1 - 1 / n - np.diag(hat), 1e-12)
        err = float(np.mean(resid ** 2))
        if err < best_err:
            best, best_err = alpha, err
    return float(best)


def kfold_r2(x: np.ndarray, y: np.ndarray, k: int = 5, alpha: float = AUTO, seed: int = 0) -> dict:
    """Out-of-fold R² of ridge regression of ``y`` on the columns of ``x``.

    Folds are a seeded permutation split into ``k`` near-equal parts; in each fold the features are standardised
    with the training part's mean and std (constant columns dropped), the model is fit there and predicts the
    held-out part. R² = 1 - SSE/SST over all held-out predictions, SST about the overall mean (so predicting each
    fold's training mean scores slightly below 0). Also returns the mean per-fold R². NaN when n < 2k.
    ``alpha`` = ``AUTO`` picks the penalty per training fold by leave-one-out within it (the held-out fold never
    informs it); ``alpha_used`` reports the median choice.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(y)
    if k < 2 or n < 2 * k:  # fewer than two held-out points per fold: no meaningful estimate
        return {"r2": math.nan, "r2_fold_mean": math.nan, "n": n, "k": k, "alpha": alpha, "alpha_used": math.nan}
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    pred = np.empty(n)
    fold_r2, used = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        mu, sd = x[train].mean(0), x[train].std(0)
        keep = sd > 0
        if keep.any():
            z = (x[train][:, keep] - mu[keep]) / sd[keep]
            used.append(loo_alpha(z, y[train]) if alpha == AUTO else alpha)
            w, b = ridge_fit(z, y[train], used[-1])
            pred[test] = (x[test][:, keep] - mu[keep]) / sd[keep] @ w + b
        else:
            pred[test] = y[train].mean()
        sst_f = ((y[test] - y[test].mean()) ** 2).sum()
        if sst_f > 0:
            fold_r2.append(1 - ((y[test] - pred[test]) ** 2).sum() / sst_f)
    sst = ((y - y.mean()) ** 2).sum()
    r2 = 1 - ((y - pred) ** 2).sum() / sst if sst > 0 else math.nan
    return {"r2": float(r2), "r2_fold_mean": float(np.mean(fold_r2)) if fold_r2 else math.nan,
            "n": n, "k": k, "alpha": alpha, "alpha_used": float(np.median(used)) if used else math.nan}
