"""The CPU benchmark cases, shared by the pytest-benchmark suite (time) and bench.cpu_memory (peak
memory): each builds its inputs once and runs one forward+backward.

    logprobs/*  per-token log-probs from hidden [N, H] and weight [V, H], random upstream gradient
    dpo/*       a DPO (sigmoid) loss on [2P, T, H] hidden states, reference log-probs given
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOGPROB_CASES = ("logprobs/naive", "logprobs/rdpo_fast")
DPO_CASES = ("dpo/naive", "dpo/rdpo_fast", "dpo/rdpo_fast-ws32MiB", "dpo/liger", "dpo/cce")
CPU_SHAPES = {"logprobs": {"n": 4096, "h": 256, "v": 32000}, "dpo": {"pairs": 2, "t": 512, "h": 256, "v": 32000}}


def make_inputs(name, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    kind = name.split("/")[0]
    if kind == "logprobs":
        n, h, v = shape["n"], shape["h"], shape["v"]
        labels = torch.randint(0, v, (n,), generator=g)
        return {"hidden": torch.randn(n, h, generator=g), "weight": torch.randn(v, h, generator=g) / h**0.5,
                "labels": labels, "upstream": torch.randn(n, generator=g)}
    pairs, t, h, v = shape["pairs"], shape["t"], shape["h"], shape["v"]
    target = torch.randint(0, v, (2 * pairs, t), generator=g)
    target[:, : t // 4] = -100  # a prompt
    return {"hidden": torch.randn(2 * pairs, t, h, generator=g), "weight": torch.randn(v, h, generator=g) / h**0.5,
            "target": target, "ref": torch.randn(2 * pairs, generator=g) - 3.0 * t}


def _leaves(inp):
    return inp["hidden"].detach().clone().requires_grad_(True), inp["weight"].detach().clone().requires_grad_(True)


def _dpo_head(seq, ref, beta=0.1):
    P = seq.shape[0] // 2
    return -F.logsigmoid(beta * ((seq[:P] - ref[:P]) - (seq[P:] - ref[P:]))).mean()


def _masked_seq(logp, target):
    return (logp * (target != -100)).sum(-1)


def run_case(name, inp):
    """One forward+backward of the named case; returns the loss (or the op's output)."""
    import rdpo_fast

    x, w = _leaves(inp)
    if name == "logprobs/naive":
        lab = inp["labels"]
        out = torch.log_softmax((x @ w.t()).float(), -1).gather(1, lab[:, None]).squeeze(1)
        out.backward(inp["upstream"])
        return out
    if name == "logprobs/rdpo_fast":
        out = rdpo_fast.linear_logprobs(x, w, inp["labels"])
        out.backward(inp["upstream"])
        return out
    target, ref = inp["target"], inp["ref"]
    P = target.shape[0] // 2
    if name == "dpo/naive":
        logp = torch.log_softmax((x @ w.t()).float(), -1).gather(-1, target.clamp_min(0)[..., None]).squeeze(-1)
        loss = _dpo_head(_masked_seq(logp, target), ref)
    elif name.startswith("dpo/rdpo_fast"):
        # The default 512 MiB workspace holds all of these CPU-size logits; the ws32MiB case shows the
        # bounded schedule at work.
        budget = 32 * 2**20 if name.endswith("ws32MiB") else None
        loss, _ = rdpo_fast.FusedLinearPreferenceLoss(workspace_budget=budget)(
            w, x, target, ref_chosen_logps=ref[:P], ref_rejected_logps=ref[P:])
    elif name == "dpo/liger":
        # Liger 0.8.5 takes no precomputed reference; without one the policy-side work is the same.
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        loss, _ = LigerFusedLinearDPOLoss(use_ref_model=False, compiled=False)(w, x, target)
    elif name == "dpo/cce":
        from cut_cross_entropy import linear_cross_entropy

        logp = -linear_cross_entropy(x, w, target, reduction="none", impl="torch_compile")
        loss = _dpo_head(logp.sum(-1), ref)
    else:
        raise ValueError(f"unknown case {name!r}")
    loss.backward()
    return loss
