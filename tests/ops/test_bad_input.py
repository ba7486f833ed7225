"""Bad input to the log-prob ops: a clear error naming the argument, before any kernel runs."""
import pytest
import torch

import rdpo_fast


def base(V=50, H=8):
    return torch.randn(2, 5, H), torch.randn(V, H), torch.randint(0, V, (2, 5))


@pytest.mark.parametrize("mutate,match", [
    (lambda h, w, l: (h[..., :-1], w, l), "hidden's last dimension"),
    (lambda h, w, l: (h, w[None], l), "weight must have shape"),
    (lambda h, w, l: (h, w.double(), l), "weight dtype"),
    (lambda h, w, l: (h.double(), w.double(), l), "hidden dtype"),
    (lambda h, w, l: (h, w, l.float()), "labels must be an integer"),
    (lambda h, w, l: (h, w, l.bool()), "labels must be an integer"),
    (lambda h, w, l: (h, w, l[:, :-1]), "labels has shape"),
    (lambda h, w, l: (h, w, l.masked_fill(l == l[0, 0], 50)), "labels holds 50"),
    (lambda h, w, l: (h, w, torch.full_like(l, -1)), "labels holds -1"),
    (lambda h, w, l: (h[:, :0], w, l[:, :0]), "hidden is empty"),
    (lambda h, w, l: (h, w[:0], l), "weight is empty"),
])
def test_linear_logprobs_rejects(mutate, match):
    h, w, l = mutate(*base())
    with pytest.raises(ValueError, match=match):
        rdpo_fast.linear_logprobs(h, w, l)


def test_bias_checks():
    h, w, l = base()
    with pytest.raises(ValueError, match="bias must have shape"):
        rdpo_fast.linear_logprobs(h, w, l, bias=torch.zeros(49))
    with pytest.raises(ValueError, match="bias dtype"):
        rdpo_fast.linear_logprobs(h, w, l, bias=torch.zeros(50, dtype=torch.bfloat16))


def test_type_errors_name_the_argument():
    h, w, l = base()
    with pytest.raises(TypeError, match="hidden"):
        rdpo_fast.linear_logprobs(h.numpy(), w, l)
    with pytest.raises(TypeError, match="labels"):
        rdpo_fast.linear_logprobs(h, w, l.tolist())


@pytest.mark.parametrize("kw,match", [({"temperature": 0.0}, "temperature"),
                                      ({"temperature": float("nan")}, "temperature"),
                                      ({"softcap": -1.0}, "softcap")])
def test_transform_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        rdpo_fast.linear_logprobs(*base(), **kw)


def test_custom_ignore_index_is_respected():
    h, w, l = base()
    l[0, :2] = 7  # with ignore_index=7 these are ignored, not labels
    out = rdpo_fast.linear_logprobs(h, w, l, ignore_index=7)
    assert torch.all(out[l == 7] == 0) and torch.all(out[l != 7] < 0)


def test_segment_ids_checks():
    h, w, l = base()
    with pytest.raises(ValueError, match="segment_ids has 9 entries"):
        rdpo_fast.sequence_logprobs(h, w, l, segment_ids=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="segment_ids must be an integer"):
        rdpo_fast.sequence_logprobs(h, w, l, segment_ids=torch.zeros(10))
    with pytest.raises(ValueError, match="segment_ids must be >= 0"):
        rdpo_fast.sequence_logprobs(h, w, l, segment_ids=-torch.ones(10, dtype=torch.long))


def test_logprobs_from_logits_checks():
    logits = torch.randn(3, 20)
    with pytest.raises(ValueError, match="labels holds 20"):
        rdpo_fast.logprobs(logits, torch.tensor([0, 20, 1]))
    with pytest.raises(ValueError, match="logits must be a non-empty"):
        rdpo_fast.logprobs(torch.randn(0, 20), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="logits dtype"):
        rdpo_fast.logprobs(logits.long(), torch.tensor([0, 1, 2]))
