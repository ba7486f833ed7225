"""bench/cost_model.py against the committed H100 files (CPU, a second or two): the calibration within
10% (issue 24), FLOP counts by SPEC section 6's convention, byte counts on a case small enough to do by
hand, the chunk and ring plans against rdpo_fast's own, and the schedules' order."""
from __future__ import annotations

import json

import pytest

from bench import cost_model as cm

LLAMA = cm.HEADS["llama3-8b"]
QWEN = cm.HEADS["qwen2.5-7b"]


@pytest.fixture(scope="module")
def dev():
    return cm.h100()


@pytest.fixture(scope="module")
def cal(dev):
    return cm.calibration(dev)


# --- calibration -------------------------------------------------------------------------------------

def test_profile_components_within_10_percent(cal):
    names = [r["component"] for r in cal["profile_components"]]
    assert len(names) == 6 and names[-1] == "all kernels"
    for r in cal["profile_components"]:
        assert 0.9 <= r["ratio"] <= 1.1, r


def test_model_schedule_matches_the_profiles_call_counts():
    # The profiled code's step as the model builds it launches what the profile counted: 8 chunks, so
    # 16 plain GEMMs, 8 dW addmm, 8 + 8 epilogue kernels, 2 grad_loss muls per step.
    prof = cm.parse_profile()
    step = cm.fused_step(cm.Problem(LLAMA, 16384), cm.Schedule("profiled", code=cm.PROFILED))
    calls = {}
    for o in step.ops:
        key = "strided" if o.kind == "strided" else o.part
        calls[key] = calls.get(key, 0) + o.calls
    assert prof["steps"] == 3
    assert calls["gemm logits+dX"] == prof["gemm logits+dX calls"] == 16
    assert calls["gemm dW"] == prof["gemm dW calls"] == 8
    assert calls["epilogue stats"] == prof["epilogue stats calls"] == 8
    assert calls["epilogue dZ"] == prof["epilogue dZ calls"] == 8
    assert calls["strided"] == prof["strided mul calls"] == 2


def test_profile_parse_accounts_for_every_kernel():
    prof = cm.parse_profile()
    parts = ("gemm logits+dX", "gemm dW", "epilogue stats", "epilogue dZ", "other kernels")
    assert sum(prof[p] for p in parts) == pytest.approx(prof["kernels"])
    # The summary of the same file: GEMMs ~72 ms, dW ~27.5, epilogues ~4.8, the rest ~4.
    assert prof["gemm logits+dX"] + prof["gemm dW"] == pytest.approx(72.3, abs=0.5)
    assert prof["other kernels"] == pytest.approx(4.1, abs=0.3)


def test_profile_parse_reads_todays_op_name(tmp_path):
    # The op is FusedPreferenceFn since issue 21 (the committed profile names it _FusedPreferenceFn): a
    # profile taken today must parse to the same numbers, and a table without the op must say so.
    text = cm.PROFILE.read_text()
    renamed = tmp_path / "today.txt"
    renamed.write_text(text.replace("_FusedPreferenceFn", " FusedPreferenceFn"))
    assert cm.parse_profile(renamed) == cm.parse_profile()
    alien = tmp_path / "alien.txt"
    alien.write_text(text.replace("_FusedPreferenceFn", " SomethingElseFn"))
    with pytest.raises(ValueError, match="FusedPreferenceFn"):
        cm.parse_profile(alien)


def test_same_run_wall_times_within_10_percent(cal):
    # gemm_eff refitted to the loss suite's own cuBLAS time; everything else as fitted to the profile.
    walls = {r["what"]: r for r in cal["same_run_walls"]}
    assert walls["cuBLAS 3 GEMMs (gemm_eff fitted to it)"]["ratio"] == pytest.approx(1.0, rel=1e-3)  # + gaps
    for r in cal["same_run_walls"]:
        assert 0.9 <= r["ratio"] <= 1.1, r


def test_sweep_within_10_percent(cal):
    rows = cal["sweep"]
    assert len(rows) == 8
    for r in rows:
        assert 0.9 <= r["ratio"] <= 1.1, r


def test_fitted_constants_are_physical(dev):
    assert 0.6 < dev.gemm_eff < 0.9
    assert 0 < dev.acc_penalty < 1  # part of the accumulator traffic hides under the GEMM's math
    for k in ("copy_eff", "fwd_epi_eff", "bwd_epi_eff", "strided_eff", "rows_eff"):
        assert 0.2 < getattr(dev, k) <= 1.0, k


# --- FLOPs (SPEC section 6: one logits GEMM is 2NHV; fwd+bwd with stored logits 6NHV) ----------------

@pytest.mark.parametrize("head", [LLAMA, QWEN])
@pytest.mark.parametrize("N", [2048, 16384, 32768])
def test_flops_follow_the_2nhv_convention(head, N):
    pb = cm.Problem(head, N)
    nhv = N * head.H * head.V
    for sc in cm.schedules(pb):
        assert cm.fused_step(pb, sc).gemm_flops == 6 * nhv, sc.label
    assert cm.cublas_step(pb).gemm_flops == 6 * nhv
    assert cm.one_gemm_step(pb).gemm_flops == 2 * nhv
    assert cm.ref_forward_step(pb).gemm_flops == 2 * nhv
    assert cm.ref_forward_step(pb, lse_in_gemm=True).gemm_flops == 2 * nhv


def test_flops_agree_with_the_committed_tflops():
    # The committed files state TF/s under the same convention: the model's FLOPs over their times give
    # back their numbers.
    sweep = json.loads(cm.SWEEP_RUN.read_text())
    for r in sweep["rows"]:
        pb = cm.Problem(cm.HEADS[r["head"]], r["N"])
        f = cm.fused_step(pb, cm.Schedule("fp32")).gemm_flops
        assert f / (r["dpo_ms"] * 1e-3) / 1e12 == pytest.approx(r["dpo_tflops"], rel=1e-9)
    loss = json.loads(cm.LOSS_RUN.read_text())
    pb = cm.Problem(LLAMA, loss["shape"]["N"])
    for r in loss["random"]:
        if r["pass"] == "DPO fwd+bwd":
            f = cm.fused_step(pb, cm.Schedule("fp32")).gemm_flops
        elif r["pass"] == "reference forward":
            f = cm.ref_forward_step(pb).gemm_flops
        else:
            continue
        assert f / (r["median_ms"] * 1e-3) / 1e12 == pytest.approx(r["tflops"], rel=1e-9), r["impl"]


# --- bytes on a hand-computable case ------------------------------------------------------------------
# H=4, V=8, bf16 (2 bytes), N=4 rows in 2 pairs of 2 rows (T=1), a workspace of one pair's logits:
# 2 rows x 8 x 2 B = 32 B, so 2 chunks of 2 rows. VH = 32 elements.

TINY = cm.Head("tiny", 4, 8)


def _ops(step):
    return {o.name: o for o in step.ops}


def test_bytes_fp32_schedule_by_hand():
    pb = cm.Problem(TINY, 4, T=1)
    step = cm.fused_step(pb, cm.Schedule("fp32", workspace=32))
    assert step.chunks == 2
    ops = _ops(step)
    lg = ops["logits GEMM [2, V]"]
    assert (lg.calls, lg.flops, lg.read, lg.write) == (2, 2 * 2 * 4 * 8, 32 * 2 + 2 * 4 * 2, 2 * 8 * 2)  # W + x, Z
    fe = ops["forward epilogue (lse, gather, sums)"]
    assert (fe.read, fe.write) == (32, 0)                                   # reads Z
    dz = ops["dZ kernel, in place"]
    assert (dz.read, dz.write) == (32, 32)                                 # reads Z, writes dZ over it
    dx = ops["dX GEMM [2, H]"]
    assert (dx.read, dx.write) == (32 + 64, 16)                            # dZ + W, dX rows
    dw = [o for o in step.ops if o.part == "gemm dW"]
    # First chunk: beta=0, stores 32 fp32 (128 B), 64 B more than a bf16 store; second: re-reads them too.
    assert [(o.read, o.c_read, o.write, o.acc) for o in dw] == [(32 + 16, 0, 128, 64), (32 + 16 + 128, 128, 128, 192)]
    cast = ops["cast dW fp32 -> weight dtype"]
    assert (cast.read, cast.write) == (128, 64)
    assert (ops["zero dX [N, H]"].write, ops["gather x rows [2, H]"].read) == (4 * 4 * 2, 2 * 4 * 2)
    t = cm.traffic(step)
    assert t["logits write"] == 64 and t["epilogue reads"] == 128 and t["dZ / S writes"] == 64
    assert t["dW writes"] == 256 and t["dW accumulator re-reads"] == 128


def test_bytes_ring_by_hand():
    pb = cm.Problem(TINY, 4, T=1)
    # A ring row is (V + H) x 2 = 24 B; all 4 rows (96 B) fit a 96 B budget: one flush, dW in bf16.
    one = cm.fused_step(pb, cm.Schedule("ring", dw="ring", ring_budget=96, workspace=32))
    dw = [o for o in one.ops if o.part == "gemm dW"]
    assert one.flushes == 1 and len(dw) == 1
    assert (dw[0].flops, dw[0].read, dw[0].write, dw[0].acc) == (2 * 4 * 4 * 8, 4 * 8 * 2 + 4 * 4 * 2, 64, 0)  # plain
    assert not [o for o in one.ops if o.name.startswith("cast")]
    assert one.planned_bytes == 96
    # 95 B: the fp32 accumulator (128 B) does not even fit, so the ring is one chunk: two flushes.
    two = cm.fused_step(pb, cm.Schedule("ring", dw="ring", ring_budget=95, workspace=32))
    assert two.flushes == 2
    assert [o.acc for o in two.ops if o.part == "gemm dW"] == [64, 128 + 64]  # fp32 store, then re-read too
    assert two.planned_bytes == 2 * 24 + 128


def test_one_pass_drops_one_read_of_the_logits():
    pb = cm.Problem(TINY, 4, T=1)
    t2 = cm.traffic(cm.fused_step(pb, cm.Schedule("fp32", workspace=32)))
    t1 = cm.traffic(cm.fused_step(pb, cm.Schedule("one-pass", epilogue="one-pass", workspace=32)))
    assert t2["epilogue reads"] - t1["epilogue reads"] == 4 * 8 * 2  # one read of all N x V logits
    assert t1["dZ / S writes"] == t2["dZ / S writes"]


# --- plans against rdpo_fast ---------------------------------------------------------------------------

def test_chunk_and_ring_plans_match_rdpo_fast():
    torch = pytest.importorskip("torch")
    from rdpo_fast.losses.fused_pass import DwRing
    from rdpo_fast.ops.schedule import chunks_of_pairs

    for rows_per_pair, cap in (([4, 6, 2, 8, 3], 8), ([10, 1, 1], 4), ([2] * 8, 2048), ([5], 3)):
        got = cm.chunks_of_pairs(rows_per_pair, cap)
        want = [r1 - r0 for _, _, r0, r1 in chunks_of_pairs(rows_per_pair, cap)]
        assert got == want
    V, H = 16, 4
    for sizes in ([3, 5, 2, 4], [6, 6, 6], [1]):
        for budget in (10, 200, 4 * V * H + 2 * (V + H) * 2 * 5, 10**6):
            for wdt in (torch.bfloat16, torch.float32):
                ring = DwRing(sizes, V, H, torch.bfloat16, wdt, budget, torch.device("cpu"))
                w_elt = torch.empty((), dtype=wdt).element_size()
                plan = cm.ring_plan(sizes, V, H, 2, budget, weight_elt=w_elt)
                assert list(plan.offsets) == ring.offsets and list(plan.flush_after) == ring.flush_after
                assert (plan.rows, plan.flushes) == (ring.rows, ring.flushes)
                # dW's buffer: the weight's dtype straight from one flush, else the fp32 accumulator.
                assert (w_elt if plan.dw_in_weight_dtype else 4) == torch.empty((), dtype=ring.w_dtype).element_size()
                assert plan.dw_in_weight_dtype == (ring.flushes == 1)


def test_default_ring_budget_at_the_reference_shape():
    # rdpo_fast's README: the default budget gives one flush up to ~10k rows at the Llama-3-8B head and
    # chunk-by-chunk flushes above.
    for N, flushes in ((2048, 1), (8192, 1), (16384, 8)):
        assert cm.fused_step(cm.Problem(LLAMA, N), cm.Schedule("ring", dw="ring")).flushes == flushes


# --- order ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", [LLAMA, QWEN])
def test_schedules_are_ordered_sensibly(dev, head):
    for N in (2048, 16384):
        pb = cm.Problem(head, N)
        one = pb.N * (head.V + head.H) * 2
        t = {sc.label.split(" (")[0]: cm.predict(cm.fused_step(pb, sc), dev).total_s for sc in cm.schedules(pb)}
        cub = cm.predict(cm.cublas_step(pb), dev).total_s
        ring = cm.predict(cm.fused_step(pb, cm.Schedule("r", dw="ring")), dev).total_s
        fp32 = t["fp32"]
        assert cub < t["scaled-exp + ring one flush"] < t["one-pass + ring one flush"] < t["ring, one flush"] < fp32
        assert t["one-pass epilogue"] < fp32 and t["weight"] < fp32
        hc = cm.predict(cm.fused_step(pb, cm.Schedule("hc", host_counts=True)), dev).total_s
        assert hc < fp32
        if N == 2048:
            assert ring < fp32  # one flush under the default budget
        else:
            assert ring == pytest.approx(fp32, rel=1e-3)  # one flush per chunk: the fp32 schedule again
        assert cm.fused_step(pb, cm.Schedule("x", dw="ring", ring_budget=one)).flushes == 1
    # Overheads weigh more at small N: today's schedule is a smaller fraction of cuBLAS there.
    r = {}
    for N in (2048, 16384):
        pb = cm.Problem(head, N)
        fused = cm.predict(cm.fused_step(pb, cm.Schedule("f")), dev).total_s
        r[N] = cm.predict(cm.cublas_step(pb), dev).total_s / fused
    assert r[2048] < r[16384] < 1


def test_ideas_are_ranked_and_the_cli_runs(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert cm.main(["--n", "2048", "16384", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {(r["head"], r["N"]) for r in data["results"]} == {(h, n) for h in cm.HEADS for n in (2048, 16384)}
    for rep in data["results"]:
        gains = [i["gain_ms"] for i in rep["ideas"]]
        assert gains == sorted(gains, reverse=True)
    assert "ring, one flush" in capsys.readouterr().out
