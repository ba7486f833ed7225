"""The fused DPO loss side by side with its peers (SPEC section 6), one run, one device:

    rdpo_fast   FusedLinearPreferenceLoss, reference log-probs given (6NHV), in each schedule: dW summed
                in fp32 (the default), in the weight's dtype, in the ring (default budget, and one flush),
                a 1 GiB workspace (fewer chunks), the one-pass epilogue (alone and with the one-flush
                ring), and the default and one-pass with the collator's host_counts (no host sync)
    liger       liger_kernel LigerFusedLinearDPOLoss (use_ref_model=False: 0.8.5 takes no precomputed
                reference, and the policy-side work is the same)
    cce         cut_cross_entropy linear_cross_entropy(reduction="none") per token + the DPO head in torch
    naive       TRL-style: full logits, log_softmax in fp32, gather, sums, head
    cublas      the three 2NHV GEMMs of 6NHV (logits, dX, dW) alone: the roofline

and the reference forward (2NHV): rdpo_fast.sequence_logprobs under no_grad against one cuBLAS GEMM.
Our schedules and the cuBLAS GEMMs they are held against are timed in one interleaved run (>= 20
samples each, median and 10th/90th percentiles; bench.timing.interleaved_ms); the peers one by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import rdpo_fast
from bench.timing import interleaved_ms, median_ms, peak_mib


def _batch(pairs, T, H, V, dtype, device, realistic):
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(2 * pairs, T, H, device=device, dtype=dtype, generator=g)
    w = torch.randn(V, H, device=device, dtype=dtype, generator=g) / H**0.5
    if realistic:
        w = w * 4.0  # peaked softmax, as a trained head gives
    target = torch.randint(0, V, (2 * pairs, T), device=device, generator=g)
    with torch.no_grad():
        ref, _ = rdpo_fast.sequence_logprobs(x, w, target)
    ref = ref + torch.randn(ref.shape, device=device, generator=g)
    return x, w, target, ref


def _dpo_head(seq_logps, ref, beta=0.1):
    P = seq_logps.shape[0] // 2
    d = (seq_logps[:P] - ref[:P]) - (seq_logps[P:] - ref[P:])
    return -F.logsigmoid(beta * d).mean()


def _naive(x, w, target, ref):
    logits = x @ w.t()
    logp = torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return _dpo_head(logp.sum(-1), ref)


def _cce(x, w, target, ref):
    from cut_cross_entropy import linear_cross_entropy

    impl = "cce" if x.is_cuda else "torch_compile"
    logp = -linear_cross_entropy(x, w, target, reduction="none", impl=impl)
    return _dpo_head(logp.sum(-1), ref)


def loss_suite(pairs, T, H, V, dtype, device, realistic):
    x, w, target, ref = _batch(pairs, T, H, V, dtype, device, realistic)
    N = 2 * pairs * T
    gemm = 2 * N * H * V / 1e12
    rows = []

    def add(name, kind, fn, tflop):
        try:
            ms = median_ms(fn, device)
            mib = peak_mib(fn, device)
            rows.append({"impl": name, "pass": kind, "median_ms": ms, "peak_mib": mib,
                         "tflops": tflop / ms * 1e3})
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            rows.append({"impl": name, "pass": kind, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            if device.type == "cuda":
                torch.cuda.empty_cache()

    x2 = x.view(N, H)
    add("cublas", "logits GEMM (2NHV)", lambda: x2 @ w.t(), gemm)
    dz = torch.randn(N, V, device=device, dtype=dtype)
    # Today's default beside the dW ring (issue 12: its default budget, and one large enough for a single
    # flush, dW written once in the weight's dtype) and the one-pass epilogue (issue 24), with and without
    # the collator's host_counts: (constructor options, call options).
    one_flush = {"dw_accumulation": "ring", "dw_ring_budget": 2 * N * (V + H) + 2**30}
    counts = {"host_counts": [T] * (2 * pairs)}  # _batch ignores no row: every row is a completion
    variants = {"rdpo_fast": ({}, {}), "rdpo_fast dW=weight": ({"dw_accumulation": "weight"}, {}),
                "rdpo_fast 1GiB ws": ({"workspace_budget": 2**30}, {}),
                "rdpo_fast dW=ring": ({"dw_accumulation": "ring"}, {}),
                "rdpo_fast dW=ring 1 flush": (one_flush, {}),
                "rdpo_fast one-pass": ({"epilogue": "one_pass"}, {}),
                "rdpo_fast one-pass dW=ring 1 flush": ({"epilogue": "one_pass", **one_flush}, {}),
                "rdpo_fast host_counts": ({}, counts),
                "rdpo_fast one-pass host_counts": ({"epilogue": "one_pass"}, counts)}
    timed = {("cublas", "3 GEMMs (6NHV)"): lambda dz=dz: (x2 @ w.t(), dz @ w, dz.t() @ x2)}
    for name, (opts, call) in variants.items():
        ours = rdpo_fast.FusedLinearPreferenceLoss(beta=0.1, **opts)

        def run_ours(ours=ours, call=call):
            xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
            loss, _ = ours(ww, xx, target, ref_chosen_logps=ref[:pairs], ref_rejected_logps=ref[pairs:], **call)
            loss.backward()

        timed[(name, "DPO fwd+bwd")] = run_ours
    rows.extend(_interleaved_rows(timed, device, 3 * gemm))
    del dz, timed  # [N, V]: not held while the peers run

    def run_plain(fn):
        def run():
            xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
            fn(xx, ww, target, ref).backward()
        return run

    try:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        for compiled in (True, False):
            liger = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=False, compiled=compiled)

            def run_liger(liger=liger):
                xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
                loss, _ = liger(ww, xx, target)
                loss.backward()

            add(f"liger{'' if compiled else ' (eager)'}", "DPO fwd+bwd", run_liger, 3 * gemm)
    except ImportError:
        rows.append({"impl": "liger", "pass": "DPO fwd+bwd", "error": "liger_kernel not installed"})
    try:
        import cut_cross_entropy  # noqa: F401

        add("cce + head", "DPO fwd+bwd", run_plain(_cce), 3 * gemm)
    except ImportError:
        rows.append({"impl": "cce + head", "pass": "DPO fwd+bwd", "error": "cut_cross_entropy not installed"})
    add("naive", "DPO fwd+bwd", run_plain(_naive), 3 * gemm)

    def ref_forward():
        with torch.no_grad():
            return rdpo_fast.sequence_logprobs(x, w, target)

    add("rdpo_fast", "reference forward", ref_forward, gemm)
    add("naive", "reference forward", lambda: _naive_ref(x, w, target), gemm)
    return rows


def _interleaved_rows(fns, device, tflop):
    """Rows for {(impl, pass): fn}, timed together by interleaved_ms; a variant that fails its first call
    is reported and left out of the run."""
    rows, ok = [], {}
    for key, fn in fns.items():
        try:
            fn()
            ok[key] = fn
        except Exception as e:
            rows.append({"impl": key[0], "pass": key[1], "error": f"{type(e).__name__}: {str(e)[:200]}"})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for key, t in interleaved_ms(ok, device).items():
        rows.append({"impl": key[0], "pass": key[1], **t, "peak_mib": peak_mib(ok[key], device),
                     "tflops": tflop / t["median_ms"] * 1e3, "interleaved": True})
    return rows


def _naive_ref(x, w, target):
    with torch.no_grad():
        logits = x @ w.t()
        return torch.log_softmax(logits.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1)


def check_loss_accuracy(pairs, T, H, V, dtype, device):
    """Fused loss vs the unfused float64 reference on a slice of the real shape: relative errors of the
    default schedule and (keys prefixed "one_pass ") of the one-pass epilogue, on the GPU's own kernels."""
    from rdpo_fast.oracle.fused import ref_fused_preference_loss

    x, w, target, ref = _batch(pairs, T, H, V, dtype, device, False)
    xd, wd = x.double().requires_grad_(True), w.double().requires_grad_(True)
    rloss, _ = ref_fused_preference_loss(wd, xd, target, ref_chosen_logps=ref[:pairs].double(),
                                         ref_rejected_logps=ref[pairs:].double())
    rloss.backward()

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    out = {}
    for prefix, epilogue in (("", "two_pass"), ("one_pass ", "one_pass")):
        xx, ww = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
        loss, _ = rdpo_fast.FusedLinearPreferenceLoss(epilogue=epilogue)(
            ww, xx, target, ref_chosen_logps=ref[:pairs], ref_rejected_logps=ref[pairs:])
        loss.backward()
        out.update({prefix + "loss": abs(loss.item() - rloss.item()) / abs(rloss.item()),
                    prefix + "d_input": rel(xx.grad, xd.grad), prefix + "d_weight": rel(ww.grad, wd.grad)})
    return out
