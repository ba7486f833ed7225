"""Turning scored candidates into preference pairs: the length-debiasing alpha sweep, argmax/argmin
pairing, and experience replay of offline pairs on disjoint prompts (SPEC section 5, DICE).

Candidates of prompt i: rewards r_ik and character lengths l_ik of its valid samples (a prompt may
have any number). For a given alpha the adjusted reward is r - alpha * l; chosen is its argmax and
rejected its argmin (first index on ties). The sweep tries alpha on a grid (default 0, 0.001, ..., 1)
for the alpha whose mean chosen-minus-rejected length over prompts is closest to 0, so the new pairs
carry no length preference on average. Two rules (ALPHA_RULES):
- "argmin": every grid point; the one closest to 0 (the smallest such alpha on ties). The
  cross-lingual paper's rule, and ours by default.
- "early-stop": DICE's rule. Walk the grid from its start and stop at the first alpha whose |mean
  difference| is worse than the best seen so far; the best alpha seen wins (the first on ties).
With argmax/argmin pairing the two agree: raising alpha can only shorten the chosen candidate and
lengthen the rejected one (if c wins at alpha and c' at alpha' > alpha, adding the two optimality
inequalities gives (alpha' - alpha)(len c - len c') >= 0), so the mean difference falls monotonically
and the walk stops just past its crossing of 0, at the argmin. The early stop evaluates fewer grid
points; a difference between the rules would come only from floating-point rounding at exact ties.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

ALPHA_RULES = ("argmin", "early-stop")
_MAX_GRID = 1_000_000


def alpha_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.001) -> torch.Tensor:
    """start, start + step, ... up to stop (included when it falls on the grid), as float64. Points are
    rounded to 12 decimals so a decimal step gives the decimal values (0.003, not 0.0030000000000000001)."""
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if not math.isfinite(v):
            raise ValueError(f"alpha grid {name} must be finite, got {v}")
    if step <= 0:
        raise ValueError(f"alpha grid step must be > 0, got {step}")
    if stop < start:
        raise ValueError(f"alpha grid stop ({stop}) is below its start ({start})")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > _MAX_GRID:
        raise ValueError(f"alpha grid of {n} points (start {start}, stop {stop}, step {step}); at most {_MAX_GRID}")
    return torch.tensor([round(start + i * step, 12) for i in range(n)], dtype=torch.float64)


ALPHA_GRID = alpha_grid()


@dataclass
class AlphaChoice:
    alpha: float
    mean_length_diff: float  # mean chosen-minus-rejected characters at alpha
    mean_length_diff_at_0: float  # the same at the grid's first point (no penalty for the default grid)
    rule: str = "argmin"
    points_tried: int = 0  # grid points evaluated (all of them for "argmin")


def _padded(rewards: list[list[float]], lengths: list[list[int]]):
    if len(rewards) != len(lengths):
        raise ValueError(f"{len(rewards)} reward lists but {len(lengths)} length lists")
    for i, (r, l) in enumerate(zip(rewards, lengths)):
        if len(r) != len(l):
            raise ValueError(f"prompt {i}: {len(r)} rewards but {len(l)} lengths")
        if len(r) < 2:
            raise ValueError(f"prompt {i}: {len(r)} candidate(s); pairing needs at least 2 (filter such prompts first)")
        if not all(math.isfinite(x) for x in r):
            raise ValueError(f"prompt {i}: non-finite reward")
    K = max(len(r) for r in rewards)
    R = torch.zeros(len(rewards), K, dtype=torch.float64)
    L = torch.zeros(len(rewards), K, dtype=torch.float64)
    valid = torch.zeros(len(rewards), K, dtype=torch.bool)
    for i, (r, l) in enumerate(zip(rewards, lengths)):
        R[i, : len(r)] = torch.tensor(r, dtype=torch.float64)
        L[i, : len(l)] = torch.tensor(l, dtype=torch.float64)
        valid[i, : len(r)] = True
    return R, L, valid


def _best_worst(R, L, valid, alphas):
    """Indices [A, P] of argmax and argmin of R - alpha * L over the valid candidates, per alpha."""
    adj = R.unsqueeze(0) - alphas.view(-1, 1, 1) * L.unsqueeze(0)  # [A, P, K]
    hi = adj.masked_fill(~valid, -math.inf).argmax(-1)
    lo = adj.masked_fill(~valid, math.inf).argmin(-1)
    return hi, lo


def choose_alpha(rewards: list[list[float]], lengths: list[list[int]], grid: torch.Tensor = ALPHA_GRID,
                 chunk: int = 128, rule: str = "argmin") -> AlphaChoice:
    """The grid alpha whose mean (len(chosen) - len(rejected)) is closest to 0 under `rule` (see the
    module docstring); the first on ties."""
    if rule not in ALPHA_RULES:
        raise ValueError(f"unknown alpha rule {rule!r}; valid: {', '.join(ALPHA_RULES)}")
    if not rewards:
        raise ValueError("choose_alpha needs at least one prompt with candidates")
    if len(grid) == 0:
        raise ValueError("the alpha grid is empty")
    R, L, valid = _padded(rewards, lengths)
    diffs = []
    best_abs = math.inf
    for start in range(0, len(grid), chunk):  # bounded memory: chunk x P x K at a time
        a = grid[start: start + chunk].to(torch.float64)
        hi, lo = _best_worst(R, L, valid, a)
        d = (L.gather(1, hi.T).T - L.gather(1, lo.T).T).mean(1)
        if rule == "early-stop":
            # Worse than the best so far (this point included) means worse than an earlier point.
            running = torch.minimum(torch.cummin(d.abs(), 0).values, torch.tensor(best_abs, dtype=torch.float64))
            worse = (d.abs() > running).nonzero()
            if len(worse):
                diffs.append(d[: int(worse[0]) + 1])
                break
            best_abs = float(running[-1])
        diffs.append(d)
    diff = torch.cat(diffs)
    best = int(torch.argmin(diff.abs()))  # argmin returns the first minimum: the smallest alpha
    return AlphaChoice(float(grid[best]), float(diff[best]), float(diff[0]), rule, len(diff))


def select_pairs(rewards: list[list[float]], lengths: list[list[int]], alpha: float) -> list[tuple[int, int] | None]:
    """Per prompt (index of chosen, index of rejected): argmax and argmin of r - alpha * len; None when
    they coincide (every candidate has the same adjusted reward, so there is no preference)."""
    R, L, valid = _padded(rewards, lengths)
    hi, lo = _best_worst(R, L, valid, torch.tensor([alpha], dtype=torch.float64))
    return [None if int(h) == int(l) else (int(h), int(l)) for h, l in zip(hi[0], lo[0])]


# ---------------------------------------------------------------------------------------- replay
def prompt_key(prompt) -> str:
    """What makes two prompts the same for the disjointness of replay: the user's words, case and
    spacing ignored (system messages differ between sources and do not make a prompt new)."""
    if isinstance(prompt, str):
        text = prompt
    else:
        text = "\n".join(m["content"] for m in prompt if m.get("role") == "user")
    return re.sub(r"\s+", " ", text).strip().lower()


def replay_count(n_new: int, gamma: float) -> int:
    """Offline pairs to mix with n_new generated ones so that offline pairs are a share gamma of the mix."""
    if not 0 <= gamma < 1:
        raise ValueError(f"replay ratio gamma must be in [0, 1), got {gamma}")
    if n_new < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    return int(round(gamma * n_new / (1 - gamma)))


@dataclass
class ReplayMix:
    records: list[dict]
    offline: int  # offline pairs mixed in
    wanted: int  # replay_count(new, gamma)
    excluded_overlap: int  # offline pairs left out because their prompt is among the generated ones


def mix_replay(new: list[dict], offline: list[dict], gamma: float, seed: int) -> ReplayMix:
    """The generated pairs plus replay_count(len(new), gamma) offline pairs drawn (seeded, without
    replacement) from those whose prompt is not among the generated pairs' prompts. When too few offline
    pairs are eligible, all of them are used (ReplayMix.offline < wanted says so)."""
    wanted = replay_count(len(new), gamma)
    taken = {prompt_key(r["prompt"]) for r in new}
    eligible = [r for r in offline if prompt_key(r["prompt"]) not in taken]
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(len(eligible), generator=g)[: min(wanted, len(eligible))].tolist()
    mixed = [dict(r, origin="generated") for r in new] + [dict(eligible[i], origin="offline") for i in sorted(pick)]
    return ReplayMix(mixed, len(pick), wanted, len(offline) - len(eligible))
