"""The generalized DPO preference head (SPEC section 4): per pair, the loss, the implicit rewards and
the analytic derivatives of the loss w.r.t. the four sequence log-probs, in one elementwise pass.

Each program handles BLOCK pairs; the loss type is a constexpr so every variant compiles to its own
branch-free kernel. Every loss is written as a function of rho_w = c - c_ref and rho_l = r - r_ref
(SimPO: of c and r), so the kernel only forms gw = dL/drho_w and gl = dL/drho_l and stores
dc = gw, dcref = -gw, dr = gl, drref = -gl.

All maths is fp32 and avoids libdevice (which the interpreter lacks): log-sigmoid uses an atanh series
for log1p instead of tl.log, because log(1 + t) rounds to 0 for t below fp32's epsilon and loses the
tail of -logsigmoid(x) for large x.
"""
import math

import torch
import triton
import triton.language as tl

# Loss ids 0..13 are rdpo_fast.preference.LOSS_TYPES' values; the kernel's branches name each one.
NUM_LOSSES = 14

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _sigmoid(x):
    # exp of -|x| only, so neither tail overflows and both keep full relative precision.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _log1p_unit(t):
    # log(1 + t) for t in [0, 1] as 2 * atanh(q), q = t / (2 + t) <= 1/3: the odd series to q^17; the
    # first term left out is below (1/9)^9 / 19 < 1e-9 relative, far under fp32's rounding.
    q = t / (2.0 + t)
    q2 = q * q
    acc = 1.0 / 15.0 + q2 * (1.0 / 17.0)
    acc = 1.0 / 13.0 + q2 * acc
    acc = 1.0 / 11.0 + q2 * acc
    acc = 1.0 / 9.0 + q2 * acc
    acc = 1.0 / 7.0 + q2 * acc
    acc = 1.0 / 5.0 + q2 * acc
    acc = 1.0 / 3.0 + q2 * acc
    acc = 1.0 + q2 * acc
    return 2.0 * q * acc


@triton.jit
def _two_diff(a, b):
    # Knuth's TwoSum of a and -b: s + e == a - b exactly (adds only, so FMA contraction cannot touch it).
    s = a - b
    bv = s - a
    e = (a - (s - bv)) + (-b - bv)
    return s, e


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - _log1p_unit(tl.exp(-tl.abs(x)))


@triton.jit
def preference_head_kernel(
    c_ptr, r_ptr, cref_ptr, rref_ptr, soft_ptr, len_c_ptr, len_r_ptr,
    loss_ptr, rew_c_ptr, rew_r_ptr, dc_ptr, dr_ptr, dcref_ptr, drref_ptr,
    P, beta, eps, gamma, tau, log_1m_eps, log_eps,
    LOSS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < P
    c = tl.load(c_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if LOSS == 13:  # SIMPO: reference-free; the "ratios" are the length-normalised log-probs.
        lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
        ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
        x = beta * (c / lw - r / ll) - gamma
        loss = -(1.0 - eps) * _logsigmoid(x) - eps * _logsigmoid(-x)
        g = -(1.0 - eps) * _sigmoid(-x) + eps * _sigmoid(x)
        gw = beta * g / lw
        gl = -beta * g / ll
        rew_w = beta * c / lw
        rew_l = beta * r / ll
    else:
        cref = tl.load(cref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        rref = tl.load(rref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        # rho = hi + lo exactly, so a pair whose log-ratios are large (1e4) but nearly equal keeps its
        # margin d: hi_w - hi_l is then exact (Sterbenz) and only the lo terms are rounded.
        rho_w, lo_w = _two_diff(c, cref)
        rho_l, lo_l = _two_diff(r, rref)
        z = beta * ((rho_w - rho_l) + (lo_w - lo_l))
        rew_w = beta * rho_w
        rew_l = beta * rho_l
        # Losses of d alone set gd = dL/d(d); gw = gd and gl = -gd below.
        gd = tl.zeros_like(z)
        gw = tl.zeros_like(z)
        gl = tl.zeros_like(z)
        if LOSS == 0 or LOSS == 1:  # SIGMOID (p = 1 - eps) / RDPO (p = soft label)
            if LOSS == 1:
                p = tl.load(soft_ptr + offs, mask=ok, other=1.0).to(tl.float32)
            else:
                p = 1.0 - eps + tl.zeros_like(z)
            loss = -p * _logsigmoid(z) - (1.0 - p) * _logsigmoid(-z)
            # -p s(-z) + (1-p) s(z), not s(z) - p, which cancels for confident pairs.
            gd = beta * (-p * _sigmoid(-z) + (1.0 - p) * _sigmoid(z))
        elif LOSS == 2:  # ROBUST
            k = 1.0 / (1.0 - 2.0 * eps)
            loss = k * (-(1.0 - eps) * _logsigmoid(z) + eps * _logsigmoid(-z))
            gd = beta * k * (-(1.0 - eps) * _sigmoid(-z) - eps * _sigmoid(z))
        elif LOSS == 3:  # HINGE; at the kink the derivative is 0, as relu's is in torch.
            loss = tl.maximum(1.0 - z, 0.0)
            gd = tl.where(z < 1.0, -beta, 0.0)
        elif LOSS == 4:  # IPO
            lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
            ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
            x = (rho_w / lw - rho_l / ll) + (lo_w / lw - lo_l / ll) - 0.5 / beta
            loss = x * x
            gw = 2.0 * x / lw
            gl = -2.0 * x / ll
        elif LOSS == 5:  # EXO_PAIR
            sp = _sigmoid(z)
            sm = _sigmoid(-z)
            lsp = _logsigmoid(z)
            lsm = _logsigmoid(-z)
            loss = sp * (lsp - log_1m_eps) + sm * (lsm - log_eps)
            # d/dz = s(z) s(-z) (ls(z) - ls(-z) - log(1-eps) + log eps), and ls(z) - ls(-z) = z.
            gd = beta * sp * sm * (z - log_1m_eps + log_eps)
        elif LOSS == 6:  # NCA_PAIR
            zw = beta * rho_w
            zl = beta * rho_l
            loss = -_logsigmoid(zw) - 0.5 * _logsigmoid(-zw) - 0.5 * _logsigmoid(-zl)
            gw = beta * (-_sigmoid(-zw) + 0.5 * _sigmoid(zw))
            gl = beta * 0.5 * _sigmoid(zl)
        elif LOSS == 7:  # BCO_PAIR
            zw = beta * rho_w
            zl = beta * rho_l
            loss = -_logsigmoid(zw) - _logsigmoid(-zl)
            gw = -beta * _sigmoid(-zw)
            gl = beta * _sigmoid(zl)
        elif LOSS == 8:  # SPPO_HARD
            a = rho_w - 0.5 / beta
            bb = rho_l + 0.5 / beta
            loss = a * a + bb * bb
            gw = 2.0 * a
            gl = 2.0 * bb
        elif LOSS == 9:  # APO_ZERO; 1 - s(x) is s(-x), exact for large x.
            zw = beta * rho_w
            zl = beta * rho_l
            loss = _sigmoid(-zw) + _sigmoid(zl)
            gw = -beta * _sigmoid(zw) * _sigmoid(-zw)
            gl = beta * _sigmoid(zl) * _sigmoid(-zl)
        elif LOSS == 10:  # APO_DOWN
            zw = beta * rho_w
            szd = _sigmoid(z) * _sigmoid(-z)
            loss = _sigmoid(zw) + _sigmoid(-z)
            gw = beta * (_sigmoid(zw) * _sigmoid(-zw) - szd)
            gl = beta * szd
        elif LOSS == 11:  # DISCOPOP
            u = z / tau
            m = _sigmoid(u)
            one_m = _sigmoid(-u)
            lsz = _logsigmoid(z)
            # exp(-z) * m as one exp: exp(-z) alone overflows for z << 0 where m underflows.
            e = tl.exp(-z + _logsigmoid(u))
            loss = -lsz * one_m + e
            # d/dz: -s(-z)(1-m) + ls(z) m(1-m)/tau + exp(-z) m ((1-m)/tau - 1)
            gd = beta * (-_sigmoid(-z) * one_m + lsz * m * one_m / tau + e * (one_m / tau - 1.0))
        elif LOSS == 12:  # SIGMOID_NORM
            lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
            ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
            x = beta * ((rho_w / lw - rho_l / ll) + (lo_w / lw - lo_l / ll))
            loss = -_logsigmoid(x)
            g = -beta * _sigmoid(-x)
            gw = g / lw
            gl = -g / ll
        gw = gw + gd
        gl = gl - gd
    tl.store(loss_ptr + offs, loss, mask=ok)
    tl.store(rew_c_ptr + offs, rew_w, mask=ok)
    tl.store(rew_r_ptr + offs, rew_l, mask=ok)
    tl.store(dc_ptr + offs, gw, mask=ok)
    tl.store(dr_ptr + offs, gl, mask=ok)
    if LOSS == 13:
        tl.store(dcref_ptr + offs, tl.zeros_like(gw), mask=ok)
        tl.store(drref_ptr + offs, tl.zeros_like(gl), mask=ok)
    else:
        tl.store(dcref_ptr + offs, -gw, mask=ok)
        tl.store(drref_ptr + offs, -gl, mask=ok)


def preference_head_fwd(c, r, cref, rref, soft, len_c, len_r, *, loss_id, beta, eps, gamma, tau):
    """Launch the head on [P] tensors (any float or integer dtype, same device). soft, len_c, len_r and,
    for SimPO, cref and rref may be None when the loss does not read them. Returns seven fp32 [P] tensors:
    (losses, rew_c, rew_r, dc, dr, dcref, drref)."""
    P = c.numel()
    outs = tuple(torch.empty(P, dtype=torch.float32, device=c.device) for _ in range(7))
    if P == 0:
        return outs
    # fp32 copies are P-sized, and one dtype per pointer keeps a single compiled variant per loss (the
    # one COMPILE_SPECS describes). An unread pointer still needs a tensor: c stands in.
    c = c.to(torch.float32).contiguous()
    args = [c if t is None else t.to(torch.float32).contiguous()
            for t in (c, r, cref, rref, soft, len_c, len_r)]
    # exo_pair's constants in float64 on the host: fp32 1 - eps is off by up to 6e-8, which is a
    # 6e-5 relative error in log(1 - eps) ~ -eps, the whole loss of a confident pair.
    log_1m_eps = math.log1p(-eps) if eps < 1 else 0.0
    log_eps = math.log(eps) if eps > 0 else 0.0
    grid = (triton.cdiv(P, BLOCK),)
    preference_head_kernel[grid](
        *args, *outs, P, float(beta), float(eps), float(gamma), float(tau), log_1m_eps, log_eps,
        LOSS=int(loss_id), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return outs


_SIGNATURE = {name: "*fp32" for name in (
    "c_ptr", "r_ptr", "cref_ptr", "rref_ptr", "soft_ptr", "len_c_ptr", "len_r_ptr",
    "loss_ptr", "rew_c_ptr", "rew_r_ptr", "dc_ptr", "dr_ptr", "dcref_ptr", "drref_ptr")}
_SIGNATURE.update({"P": "i32", "beta": "fp32", "eps": "fp32", "gamma": "fp32", "tau": "fp32",
                   "log_1m_eps": "fp32", "log_eps": "fp32",
                   "LOSS": "constexpr", "BLOCK": "constexpr"})

# Ahead-of-time builds, one per loss id, for
# triton.compile(ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"]),
#                target=GPUTarget("cuda", 90, 32), options={"num_warps": s["num_warps"]}).
COMPILE_SPECS = [
    {"fn": preference_head_kernel, "signature": dict(_SIGNATURE),
     "constexprs": {"LOSS": loss_id, "BLOCK": BLOCK}, "num_warps": NUM_WARPS}
    for loss_id in range(NUM_LOSSES)
]
