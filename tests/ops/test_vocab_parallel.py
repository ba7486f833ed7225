"""Vocabulary-parallel and sequence-parallel fused ops (issue 22, items 1 and 2; SPEC section 9).

One torchrun launch per world size (tests/support/vp_check.py, gloo on CPU, kernels under the Triton interpreter)
runs every case and writes relative errors to JSON; the asserts are here:
  2 processes: tensor parallel (plain slices out of rank order, V=37 not divisible; DTensor Shard(0)),
               then sequence parallel (load-balanced positions, as context parallelism shards them)
  4 processes: tensor parallel over four (also a rank with an empty slice), then a 2 x 2 mesh
               (sequence x tensor; DTensor and plain)
The one-pass epilogue runs over vocabulary slices (its S then written by a separate pass, once the chunk's
collective has made the logsumexp whole) and under sequence parallelism.
Every case agrees with one process over the whole inputs and with the float64 oracle within the
float32 tolerance of the single-process tests (tests/losses/test_fused_loss.py); every rank returns the same
loss bits. The combination maths itself is checked in this process, without a process group."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from paths import SUPPORT

import rdpo_fast
from rdpo_fast.ops.epilogue import forward_epilogue, vocab_partials
from rdpo_fast.ops.parallel import combine_partials
from rdpo_fast.oracle.logprobs import ref_log_sum_sq_probs, transform_logits

HERE = str(SUPPORT)  # the torchrun worker and the helpers it imports
TOL = 1e-5  # float32 against float64, as tests/losses/test_fused_loss.py
needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

# Every case each layout must have run (a case silently dropped from the worker fails here).
PAIR_CASES = {"sigmoid_ref_in_pass_chunks", "softcap_temperature", "ipo", "rdpo_soft_labels", "simpo", "aot_two_phase",
              "wpo_weighting", "mpo_list_ring", "kto", "sequence_logprobs"}
TP_ONLY = {"ld_dpo", "linear_logprobs_softcap", "one_pass_chunks", "one_pass_aot_ring"}
EXPECTED = {
    2: {"tp2_plain": PAIR_CASES | TP_ONLY,
        "tp2_dtensor": {"sigmoid_ref_in_pass_chunks", "softcap_temperature", "ipo", "kto"},
        "sp2": PAIR_CASES | {"token_stats", "average_log_prob", "one_pass_wpo"}},
    4: {"tp4_plain": PAIR_CASES | TP_ONLY,
        "tp4_dtensor": {"sigmoid_ref_in_pass_chunks", "softcap_temperature", "ipo", "kto", "empty_slice"},
        "sp2xtp2_dtensor": PAIR_CASES, "sp2xtp2_plain": {"sigmoid_ref_in_pass_chunks", "softcap_temperature"}},
}
# Refused on every rank, with these words in the message.
REFUSED = {
    "all_ignored_sequence": "has no completion token",
    "label_outside_vocab": "outside [0, 37)",
    "token_stats_refused": "argmax over the whole vocabulary",
    "wrong_vocab_start": "leave a gap at tokens",
    "labels_differ": "hold different labels",
    "dtensor_and_process_group": "give either a DTensor",
    "weight_sharded_over_h": "Shard(dim=1)",
    "hidden_not_replicated": "sequence_parallel_group=",
    "vocab_start_without_group": "give process_group= too",
    "ld_refused": "ld_alpha with sequence_parallel_group",
}


@pytest.fixture(scope="module", params=[2, 4], ids=["2proc", "4proc"])
def run(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp("vp") / f"vp{world}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
           os.path.join(HERE, "vp_check.py"), "--out", str(out)]
    # gloo on CPU even where a GPU is present; the kernels interpreted, one thread a process.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return world, json.load(open(out))["results"]


@needs_gloo
def test_every_case_ran(run):
    world, results = run
    ran = {}
    for r in results:
        if "errors_vs" in r:
            ran.setdefault(r["layout"], set()).add(r["case"])
    assert ran == EXPECTED[world]


@needs_gloo
def test_values_and_gradients_match_one_process_and_float64(run):
    _, results = run
    bad = []
    for r in results:
        for what, e in r.get("errors_vs", {}).items():
            # Against the oracle, and against one process on the whole inputs (which the oracle bounds too).
            for against in ("oracle", "single", "single_oracle"):
                if not e[against] <= TOL:
                    bad.append(f"{r['layout']}/{r['case']}/{what} vs {against}: {e[against]:.2e}")
    assert not bad, "\n".join(bad)


@needs_gloo
def test_every_rank_holds_the_same_results(run):
    _, results = run
    for r in results:
        if "errors_vs" in r:
            # The combined values are added in rank order on every rank: the same bits everywhere.
            assert r["loss_spread"] == 0 and r["aux_spread"] == 0 and r["dx_spread"] == 0, r


@needs_gloo
def test_dtensor_gradients_keep_the_layout(run):
    world, results = run
    for r in results:
        if r["layout"].endswith("_dtensor") and "errors_vs" in r:
            want = ["S(0)"] if r["layout"].startswith("tp") else ["R", "S(0)"]
            assert r["dtensor_grads"]["w"] == want and r["dtensor_grads"]["b"] == want, r
            if r["layout"].startswith("tp"):  # hidden states given as a Replicate DTensor
                assert r["dtensor_grads"]["x"] == ["R"], r


@needs_gloo
def test_inconsistent_inputs_are_refused_on_every_rank(run):
    world, results = run
    refused = [r for r in results if "errors" in r]
    assert {r["case"] for r in refused} >= set(REFUSED) - ({"ld_refused"} if world == 4 else set())
    for r in refused:
        assert len(r["errors"]) == world
        for msg in r["errors"]:
            assert msg is not None and REFUSED[r["case"]] in msg, (r["case"], msg)


# ------------------------------------------------------------------------ the maths, in this process
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("softcap,temperature", [(None, 1.0), (2.5, 0.7)])
def test_slice_partials_combine_to_the_whole_vocabulary(kernel, softcap, temperature, device, monkeypatch):
    if not kernel:  # the torch twin (rdpo_fast.ops.backend): CPU tensors, the interpreter off
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        device = torch.device("cpu")
    M, V = 11, 53
    z = (torch.randn(M, V) * 3).to(device)
    labels = torch.randint(0, V, (M,)).to(device)
    # Three uneven slices and an empty one, gathered in an order that is not the vocabulary's.
    cuts = [(20, 53), (0, 7), (53, 53), (7, 20)]
    parts = torch.stack([vocab_partials(z[:, a:b].contiguous(), labels, v_offset=a, temperature=temperature,
                                        softcap=softcap, with_sq=True) for a, b in cuts])
    lse, target, logit, sq = combine_partials(parts)
    # Against float64, to float32's tolerance.
    z, labels, lse, target, logit, sq = (t.cpu() for t in (z, labels, lse, target, logit, sq))
    zd = transform_logits(z.double(), temperature, softcap)
    torch.testing.assert_close(lse, torch.logsumexp(zd, -1).float())
    torch.testing.assert_close(target - lse, torch.log_softmax(zd, -1).gather(1, labels[:, None])[:, 0].float())
    torch.testing.assert_close(logit, zd.sum(-1).float())
    torch.testing.assert_close(sq, ref_log_sum_sq_probs(z.double(), temperature=temperature, softcap=softcap).float())
    # And the single-process epilogue gives the same values (to float32 rounding).
    whole_lse, whole_logp = forward_epilogue(z.clone().to(device), labels.to(device), temperature=temperature,
                                             softcap=softcap)
    whole_lse, whole_logp = whole_lse.cpu(), whole_logp.cpu()
    torch.testing.assert_close(lse, whole_lse)
    torch.testing.assert_close(target - lse, whole_logp)


def test_parallel_keywords_are_checked_without_a_process_group():
    x, w, y = torch.randn(2, 3, 4), torch.randn(5, 4), torch.randint(0, 5, (2, 3))
    with pytest.raises(ValueError, match="give process_group= too"):
        rdpo_fast.linear_logprobs(x, w, y, vocab_start=2)
    with pytest.raises(TypeError, match="process_group must be a torch.distributed ProcessGroup"):
        rdpo_fast.sequence_logprobs(x, w, y, process_group="tp", vocab_start=0)
    with pytest.raises(TypeError, match="sequence_parallel_group must be"):
        rdpo_fast.sequence_logprobs(x, w, y, sequence_parallel_group=1)
    with pytest.raises(TypeError, match="sequence_parallel_group must be"):
        rdpo_fast.FusedLinearPreferenceLoss(use_ref_model=False, loss_type="simpo")(
            w, x, y, sequence_parallel_group=object())
