"""The length-controlled win rate of AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval"),
written here from the published model.

A generalised linear model predicts the judge's preference for the model over the baseline from the
answers' length difference: logit P(model wins on item i) = w_len * tanh(d_i / std(d)) [+ w_diff *
difficulty_i] + w_0, where d_i = len(baseline answer) - len(model answer) in characters (AlpacaEval's
sign convention) and the preference p_i in [0, 1] is the target (soft labels: the loss is the cross-
entropy against p_i). The length-controlled win rate is the model's mean predicted preference with the
length difference set to zero: 100 * mean_i sigmoid(w_diff * difficulty_i + w_0).

The fit is AlpacaEval's: L1-penalised logistic regression without a separate intercept (the constant
column is the model-vs-baseline term and is penalised too), objective ||w||_1 + C * sum_i CE(p_i, q_i),
with C chosen from 10 values log-spaced over 1e-4..1e4 by 5-fold cross-validation over items (items dealt
to folds round-robin from the last one, as scikit-learn's GroupKFold deals equal-size groups), scored by
the mean held-out cross-entropy, then refitted on all items. The objective is solved here to high
precision by proximal Newton steps (three parameters at most), so the weights are the exact optimum
where liblinear stops at its tolerance.

AlpacaEval 2's leaderboard model ("length_controlled_v1") adds two things that exist only for its own
805 instructions: a per-instruction difficulty fitted on all leaderboard models, and a regularisation
towards annotations of deliberately verbose and concise baselines. Offline, on any prompt set, this module
fits AlpacaEval's "length_controlled_minimal" model; given per-item difficulties (AlpacaEval's
instruction_difficulty.csv for its own instructions) it fits "length_controlled_noreg". Both are
checked against numbers computed by the alpaca-eval package (tests/fixtures/lc_glm.json).
"""
from __future__ import annotations

import math

import torch

DTYPE = torch.float64
CS = tuple(float(c) for c in torch.logspace(-4, 4, 10, dtype=DTYPE))


def _loss(X, p, w, C):
    z = X @ w
    ce = p * torch.nn.functional.softplus(-z) + (1 - p) * torch.nn.functional.softplus(z)
    return float(w.abs().sum() + C * ce.sum())


def _lasso_cd(g: list, H: list, w: list, iters: int = 1000) -> list:
    """argmin_u g.(u-w) + (u-w)'H(u-w)/2 + ||u||_1 by coordinate descent (d <= 3: plain floats)."""
    d = len(w)
    u = list(w)
    for _ in range(iters):
        change = 0.0
        for j in range(d):
            if H[j][j] <= 0:
                new = 0.0  # a zero column: its weight stays 0
            else:
                grad = g[j] + sum(H[j][k] * (u[k] - w[k]) for k in range(d))
                v = u[j] - grad / H[j][j]
                new = math.copysign(max(abs(v) - 1.0 / H[j][j], 0.0), v)
            change = max(change, abs(new - u[j]))
            u[j] = new
        if change <= 1e-16:
            break
    return u


def fit_l1_logistic(X: torch.Tensor, p: torch.Tensor, C: float, *, max_iter: int = 200) -> torch.Tensor:
    """argmin_w ||w||_1 + C * sum_i CE(p_i, sigmoid(x_i . w)), by proximal Newton with a backtracking line
    search; each Newton subproblem (a lasso on d <= 3 coordinates) is solved by coordinate descent."""
    X, p = X.to(DTYPE), p.to(DTYPE)
    d = X.shape[1]
    w = torch.zeros(d, dtype=DTYPE)
    f = _loss(X, p, w, C)
    for _ in range(max_iter):
        s = torch.sigmoid(X @ w)
        g = C * (X.T @ (s - p))
        H = C * (X.T * (s * (1 - s))) @ X
        u = torch.tensor(_lasso_cd(g.tolist(), H.tolist(), w.tolist()), dtype=DTYPE)
        step = u - w
        if float(step.abs().max()) <= 1e-13:
            break
        decrease = float(g @ step + u.abs().sum() - w.abs().sum())
        if decrease > -1e-13 * max(1.0, abs(f)):  # at the optimum to double precision
            break
        t = 1.0
        while True:
            cand = w + t * step
            fc = _loss(X, p, cand, C)
            if fc <= f + 1e-4 * t * decrease or t < 1e-10:
                break
            t *= 0.5
        if fc > f:  # no descent left at double precision
            break
        w, f = cand, fc
    return w


def _features(model_lengths, baseline_lengths, difficulty):
    delta = torch.as_tensor(baseline_lengths, dtype=DTYPE) - torch.as_tensor(model_lengths, dtype=DTYPE)
    n = len(delta)
    std = float(delta.std()) if n > 1 else 0.0  # sample std (ddof 1)
    length = torch.tanh(delta / std) if std > 0 else torch.zeros(n, dtype=DTYPE)
    cols = [length]
    if difficulty is not None:
        cols.append(torch.as_tensor(difficulty, dtype=DTYPE))
    cols.append(torch.ones(n, dtype=DTYPE))
    return torch.stack(cols, dim=1), std


def _folds(n: int, k: int) -> list[torch.Tensor]:
    fold = torch.tensor([(n - 1 - i) % k for i in range(n)])
    return [torch.nonzero(fold == f).flatten() for f in range(k)]


def _heldout_ce(X, p, w) -> float:
    q = torch.sigmoid(X @ w).clamp(1e-15, 1 - 1e-15)
    return float(-(p * q.log() + (1 - p) * (1 - q).log()).mean())


def length_controlled_winrate(preferences: list[float], model_lengths: list[int], baseline_lengths: list[int],
                              *, difficulty: list[float] | None = None, n_splits: int = 5) -> dict:
    """AlpacaEval 2's length-controlled win rate (percent) of the model over the baseline, with the GLM's
    weights and the chosen C. preferences: P(model's answer better) per item, in [0, 1]."""
    p = torch.as_tensor(preferences, dtype=DTYPE)
    n = len(p)
    if n < 2:
        raise ValueError(f"the length-controlled win rate needs at least 2 items, got {n}")
    if not (len(model_lengths) == len(baseline_lengths) == n) or (difficulty is not None and len(difficulty) != n):
        raise ValueError("preferences, lengths and difficulties must have one value per item")
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError("preferences must lie in [0, 1]")
    X, std = _features(model_lengths, baseline_lengths, difficulty)
    k = min(n_splits, n)
    folds = _folds(n, k)
    cv = []
    for C in CS:
        total = 0.0
        for test in folds:
            train = torch.ones(n, dtype=torch.bool)
            train[test] = False
            w = fit_l1_logistic(X[train], p[train], C)
            total += _heldout_ce(X[test], p[test], w)
        cv.append(total / k)
    best = min(range(len(CS)), key=lambda i: (cv[i], i))  # the first of equal scores, as argmax of -loss does
    C = CS[best]
    w = fit_l1_logistic(X, p, C)
    X0 = X.clone()
    X0[:, 0] = 0.0  # no length difference
    pred = torch.sigmoid(X0 @ w)
    names = ["length", *(["difficulty"] if difficulty is not None else []), "model"]
    sem = float(pred.std() / math.sqrt(n)) if n > 1 else 0.0
    return {"length_controlled_winrate": 100 * float(pred.mean()), "lc_standard_error": 100 * sem,
            "glm": "length_controlled_noreg" if difficulty is not None else "length_controlled_minimal",
            "weights": dict(zip(names, (float(v) for v in w))), "C": C, "length_std": std,
            "cv_cross_entropy": cv}
