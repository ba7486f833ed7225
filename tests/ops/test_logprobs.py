"""linear_logprobs / sequence_logprobs / logprobs against the float64 oracle: values and gradients,
on fresh random inputs, through the real kernels (interpreted on CPU, compiled on CUDA)."""
import pytest
import torch

import rdpo_fast
from rdpo_fast.ops import epilogue
from rdpo_fast.ops.logprobs import linear_stats, sequence_ids
from rdpo_fast.oracle import ref_linear_logprobs, ref_logprobs, ref_sequence_logit_sums, ref_sequence_sums

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}

# (B, T, H, V): V=5000 needs two vocabulary tiles under the interpreter (4096 + 904); none is a
# multiple of the block sizes.
SHAPES = [(2, 37, 48, 1000), (3, 29, 40, 5000), (1, 131, 24, 777)]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_inputs(B, T, H, V, dtype, device, ignore_frac=0.5, bias=True):
    hidden = torch.randn(B, T, H, device=device).to(dtype)
    weight = (torch.randn(V, H, device=device) / H**0.5).to(dtype)
    b = (torch.randn(V, device=device) * 0.5).to(dtype) if bias else None
    labels = torch.randint(0, V, (B, T), device=device)
    labels[torch.rand(B, T, device=device) < ignore_frac] = -100
    return hidden, weight, b, labels


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def oracle_grads(fn, tensors, upstream):
    xs = [None if t is None else t.detach().double().requires_grad_(True) for t in tensors]
    out = fn(*xs)
    out.backward(upstream.double())
    return out.detach(), [None if x is None else x.grad for x in xs]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature,softcap", [(1.0, None), (0.7, None), (1.3, 4.0)])
def test_linear_logprobs_values_and_grads(shape, dtype, temperature, softcap, device):
    B, T, H, V = shape
    ignore_frac = float(torch.empty(1).uniform_(0.3, 0.7))
    hidden, weight, bias, labels = make_inputs(B, T, H, V, dtype, device, ignore_frac)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    # A small workspace forces several row chunks.
    out = rdpo_fast.linear_logprobs(h, w, labels, bias=b, temperature=temperature, softcap=softcap,
                                    workspace_budget=17 * V * 8)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    upstream = torch.randn(B, T, device=device)
    out.backward(upstream)

    ref, (gh, gw, gb) = oracle_grads(
        lambda x, y, z: ref_linear_logprobs(x, y, labels, bias=z, temperature=temperature, softcap=softcap),
        (hidden, weight, bias), upstream)
    tol = TOL[dtype]
    assert rel(out, ref) <= tol
    assert torch.all(out[labels == -100] == 0)
    assert rel(h.grad, gh) <= tol
    assert rel(w.grad, gw) <= tol
    assert rel(b.grad, gb) <= tol
    assert h.grad.dtype == dtype and w.grad.dtype == dtype and b.grad.dtype == dtype


@pytest.mark.parametrize("packed", [False, True])
def test_sequence_logprobs_sums_counts_and_grads(packed, device):
    B, T, H, V = 4, 23, 32, 1500
    hidden, weight, bias, labels = make_inputs(B, T, H, V, torch.float32, device, 0.5)
    if packed:
        # One packed row of several sequences of uneven lengths.
        hidden, labels = hidden.reshape(1, B * T, H), labels.reshape(1, B * T)
        cuts = torch.tensor([0, 10, 41, 42, 70, B * T])
        seg = torch.repeat_interleave(torch.arange(5), cuts.diff()).to(device).view(1, -1)
    else:
        seg = None
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    sums, counts = rdpo_fast.sequence_logprobs(h, w, labels, bias=b, segment_ids=seg, temperature=0.8,
                                               softcap=6.0, workspace_budget=9 * V * 8)
    up = torch.randn_like(sums)
    sums.backward(up)

    def f(x, y, z):
        return ref_sequence_sums(ref_linear_logprobs(x, y, labels, bias=z, temperature=0.8, softcap=6.0),
                                 labels, segment_ids=seg)[0]

    ref, (gh, gw, gb) = oracle_grads(f, (hidden, weight, bias), up)
    _, ref_counts = ref_sequence_sums(torch.zeros(labels.shape, device=device), labels, segment_ids=seg)
    assert counts.dtype == torch.int64 and torch.equal(counts, ref_counts)
    assert rel(sums, ref) <= 1e-5
    for got, want in ((h.grad, gh), (w.grad, gw), (b.grad, gb)):
        assert rel(got, want) <= 1e-5


def test_logit_sums_for_metrics(device):
    B, T, H, V = 2, 31, 16, 700
    hidden, weight, bias, labels = make_inputs(B, T, H, V, torch.float32, device, 0.4)
    ids, nseq = sequence_ids(labels, None)
    _, _, logit_sums = linear_stats(hidden, weight, labels, bias, ids, nseq, -100, 1.5, 3.0, None)
    ref = ref_sequence_logit_sums(hidden.double(), weight.double(), labels, bias=bias.double(),
                                  temperature=1.5, softcap=3.0)
    assert rel(logit_sums, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_from_logits(dtype, device):
    logits = (torch.randn(3, 41, 2100, device=device) * 4).to(dtype)
    labels = torch.randint(0, 2100, (3, 41), device=device)
    labels[torch.rand(3, 41, device=device) < 0.5] = -100
    x = leaf(logits)
    out = rdpo_fast.logprobs(x, labels, temperature=0.9)
    up = torch.randn(3, 41, device=device)
    out.backward(up)
    ref, (g,) = oracle_grads(lambda z: ref_logprobs(z, labels, temperature=0.9), (logits,), up)
    assert rel(out, ref) <= TOL[dtype]
    assert rel(x.grad, g) <= TOL[dtype]
    assert torch.all(x.grad[labels == -100] == 0)


@pytest.mark.parametrize("temperature,softcap", [(1.2, 5.0), (0.8, None)])  # copy path, in-place path
def test_torch_fallback_matches_oracle(temperature, softcap, monkeypatch, device):
    """The no-Triton CPU path runs the same chunked schedule with the torch epilogue."""
    if device.type == "cuda":
        pytest.skip("the torch twin is the CPU path")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert epilogue.backend(torch.zeros(1)) == "torch"
    hidden, weight, bias, labels = make_inputs(2, 33, 24, 900, torch.float32, device, 0.5)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    out = rdpo_fast.linear_logprobs(h, w, labels, bias=b, temperature=temperature, softcap=softcap,
                                    workspace_budget=7 * 900 * 8)
    up = torch.randn(2, 33, device=device)
    out.backward(up)
    ref, grads = oracle_grads(
        lambda x, y, z: ref_linear_logprobs(x, y, labels, bias=z, temperature=temperature, softcap=softcap),
        (hidden, weight, bias), up)
    assert rel(out, ref) <= 1e-5
    for got, want in zip((h.grad, w.grad, b.grad), grads):
        assert rel(got, want) <= 1e-5


def test_all_rows_ignored_gives_zeros_not_nan(device):
    hidden, weight, bias, labels = make_inputs(2, 9, 16, 300, torch.float32, device, 0.0)
    labels.fill_(-100)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    out = rdpo_fast.linear_logprobs(h, w, labels, bias=b)
    sums, counts = rdpo_fast.sequence_logprobs(h, w, labels, bias=b)
    (out.sum() + sums.sum()).backward()
    assert torch.all(out == 0) and torch.all(sums == 0) and torch.all(counts == 0)
    for g in (h.grad, w.grad, b.grad):
        assert torch.all(g == 0)


def test_nan_in_hidden_propagates(device):
    hidden, weight, _, labels = make_inputs(1, 12, 16, 300, torch.float32, device, 0.0, bias=False)
    hidden[0, 3, 5] = float("nan")
    out = rdpo_fast.linear_logprobs(hidden, weight, labels)
    assert torch.isnan(out[0, 3])
    assert torch.isfinite(out[0, torch.arange(12) != 3]).all()


def test_no_grad_forward_saves_nothing_and_matches(device):
    hidden, weight, bias, labels = make_inputs(2, 19, 16, 400, torch.float32, device, 0.5)
    h = leaf(hidden)
    with_grad = rdpo_fast.linear_logprobs(h, weight, labels, bias=bias)
    with torch.no_grad():
        plain = rdpo_fast.linear_logprobs(h, weight, labels, bias=bias)
    assert plain.grad_fn is None and with_grad.grad_fn is not None
    assert torch.equal(plain, with_grad.detach())


def test_chunking_changes_nothing(device):
    hidden, weight, bias, labels = make_inputs(2, 40, 16, 600, torch.float32, device, 0.3)
    whole = rdpo_fast.linear_logprobs(hidden, weight, labels, bias=bias)
    tiny = rdpo_fast.linear_logprobs(hidden, weight, labels, bias=bias, workspace_budget=1)
    assert rel(tiny, whole) <= 1e-6
