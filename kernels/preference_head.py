"""The generalized DPO preference head (SPEC section 4): per pair, the loss, the implicit rewards and
the analytic derivatives of the loss w.r.t. the four sequence log-probs, in one elementwise pass.

Each program handles BLOCK pairs; the loss type is a constexpr so every variant compiles to its own
branch-free kernel. Every loss is written as a function of rho_w = c - c_ref and rho_l = r - r_ref
(the reference-free ones of c and r), so the kernel forms gw = dL/drho_w and gl = dL/drho_l and stores
dc = gw, dcref = -gw, dr = gl, drref = -gl. Derivatives are those of the SUM of the losses w.r.t. each
input: for the per-pair losses that is each pair's own derivative; for the batch-level ones (aot*,
sft) the host passes what couples the pairs (the sort permutations, the batch NLL) and the host's
autograd op applies the matching rule to a non-uniform upstream gradient.

Runtime (not constexpr) settings, uniform over a launch so their branches cost nothing: the
f-divergence of TRL's f-DPO (scores f'(exp(rho)) in place of rho), and per-pair WPO weights.

All maths is fp32 and avoids libdevice (which the interpreter lacks): log-sigmoid uses an atanh series
for log1p instead of tl.log, because log(1 + t) rounds to 0 for t below fp32's epsilon and loses the
tail of -logsigmoid(x) for large x; expm1 uses a Taylor series near 0 for the same reason.
"""
import math

import torch
import triton
import triton.language as tl

# Loss ids 0..18 are rdpo_fast.losses.head.LOSS_TYPES' values (the order of rdpo_fast.losses.table);
# 19 (KTO, unpaired) is used by rdpo_fast.losses.kto only. constexpr globals, so the kernel's branches
# name each one and are still resolved at compile time (one branch-free build per loss); on the host
# they behave as ints.
(SIGMOID, RDPO, ROBUST, HINGE, IPO, EXO_PAIR, NCA_PAIR, BCO_PAIR, SPPO_HARD, APO_ZERO, APO_DOWN, DISCOPOP,
 SIGMOID_NORM, SIMPO, AOT, AOT_UNPAIRED, ORPO, CPO, SFT, KTO) = map(tl.constexpr, range(20))
NUM_LOSSES = 20

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
def _expm1(x):
    # e^x - 1 with full relative precision near 0: Taylor (Horner) to x^10 for |x| < 0.7, where the
    # first term left out is below 0.7^11 / 11! < 1e-9 relative; beyond, |e^x - 1| > 0.5 and exp(x) - 1
    # cancels nothing.
    xs = tl.where(tl.abs(x) < 0.7, x, 0.0)
    acc = 1.0 + xs * (1.0 / 10.0)
    acc = 1.0 + xs * (1.0 / 9.0) * acc
    acc = 1.0 + xs * (1.0 / 8.0) * acc
    acc = 1.0 + xs * (1.0 / 7.0) * acc
    acc = 1.0 + xs * (1.0 / 6.0) * acc
    acc = 1.0 + xs * (1.0 / 5.0) * acc
    acc = 1.0 + xs * (1.0 / 4.0) * acc
    acc = 1.0 + xs * (1.0 / 3.0) * acc
    acc = 1.0 + xs * (1.0 / 2.0) * acc
    return tl.where(tl.abs(x) < 0.7, xs * acc, tl.exp(x) - 1.0)


@triton.jit
def _log1mexp(a):
    # log(1 - e^a) for a <= 0: log(-expm1(a)) near 0, log1p(-e^a) (the atanh series, valid for
    # arguments down to -0.5) below -log 2. -inf at a = 0, as the maths says.
    far = tl.minimum(a, -0.6931471805599453)
    return tl.where(a > -0.6931471805599453, tl.log(-_expm1(tl.minimum(a, 0.0))), _log1p_unit(-tl.exp(far)))


@triton.jit
def _f_score(x, lo, fdiv, f_alpha):
    """TRL's f-DPO score of a log-ratio x + lo (lo a small exact correction): (score, its correction,
    d score / d x). fdiv: 1 forward KL 1 - e^-x, 2 JS log 2 + ls(x), 3 alpha (e^t - 1)/(alpha - 1) with
    t = (alpha - 1) x clamped at 80 as TRL clamps fp32 (no gradient past the clamp)."""
    if fdiv == 1:
        d = tl.exp(-x)
        s = -_expm1(-x)
    elif fdiv == 2:
        d = _sigmoid(-x)
        s = 0.6931471805599453 + _logsigmoid(x)
    else:
        am1 = f_alpha - 1.0
        t = am1 * x
        clamped = t > 80.0
        t = tl.minimum(t, 80.0)
        s = _expm1(t) / am1
        d = tl.where(clamped, 0.0, tl.exp(t))
    return s, d * lo, d


@triton.jit
def _cdpo(z, eps, beta):
    # -(1-eps) ls(z) - eps ls(-z) and beta times its z-derivative, written without s(z) - p cancelling.
    loss = -(1.0 - eps) * _logsigmoid(z) - eps * _logsigmoid(-z)
    return loss, beta * (-(1.0 - eps) * _sigmoid(-z) + eps * _sigmoid(z))


@triton.jit
def _dsig_diff(a, b, u, v):
    """s'(a) - s'(b) with s' = s(x) s(-x), for u = (b - a) / 2 and v = (a + b) / 2 given accurately.
    s'(a) - s'(b) = 4 s'(a) s'(b) sinh(u) sinh(v) (cosh^2 y - cosh^2 x = sinh(y+x) sinh(y-x)); in
    exponentials of -|.| only, with |u| + |v| = max(|a|, |b|), that is
    sgn(uv) e^-min(|a|,|b|) (1 - e^-2|u|)(1 - e^-2|v|) / ((1 + e^-|a|)^2 (1 + e^-|b|)^2): no difference of
    nearly equal terms and neither overflow nor inf * 0."""
    ea = tl.exp(-tl.abs(a))
    eb = tl.exp(-tl.abs(b))
    num = _expm1(-2.0 * tl.abs(u)) * _expm1(-2.0 * tl.abs(v))  # two negatives: the product is >= 0
    den = (1.0 + ea) * (1.0 + ea) * (1.0 + eb) * (1.0 + eb)
    mag = tl.exp(-tl.minimum(tl.abs(a), tl.abs(b))) * num / den
    return tl.where(u * v < 0.0, -mag, mag)


@triton.jit
def preference_head_kernel(
    c_ptr, r_ptr, cref_ptr, rref_ptr, soft_ptr, len_c_ptr, len_r_ptr, w_ptr, perm_a_ptr, perm_b_ptr,
    loss_ptr, rew_c_ptr, rew_r_ptr, dc_ptr, dr_ptr, dcref_ptr, drref_ptr,
    P, beta, eps, gamma, tau, log_1m_eps, log_eps, fdiv, f_alpha, s1, s2, has_w,
    LOSS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < P
    c = tl.load(c_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if LOSS == AOT or LOSS == AOT_UNPAIRED:  # position k of two sorted orders (TRL's aot*).
        # perm_a / perm_b are the host's argsorts: AOT sorts c - r and c_ref - r_ref, AOT_UNPAIRED
        # rho_w and rho_l. Position k pairs entry perm_a[k] of one order with perm_b[k] of the other;
        # each index is written once, so the scattered stores do not race.
        ia = tl.load(perm_a_ptr + offs, mask=ok, other=0)
        ib = tl.load(perm_b_ptr + offs, mask=ok, other=0)
        if LOSS == AOT:
            x_hi, x_lo = _two_diff(tl.load(c_ptr + ia, mask=ok, other=0.0), tl.load(r_ptr + ia, mask=ok, other=0.0))
            y_hi, y_lo = _two_diff(tl.load(cref_ptr + ib, mask=ok, other=0.0),
                                   tl.load(rref_ptr + ib, mask=ok, other=0.0))
        else:
            x_hi, x_lo = _two_diff(tl.load(c_ptr + ia, mask=ok, other=0.0),
                                   tl.load(cref_ptr + ia, mask=ok, other=0.0))
            y_hi, y_lo = _two_diff(tl.load(r_ptr + ib, mask=ok, other=0.0),
                                   tl.load(rref_ptr + ib, mask=ok, other=0.0))
        loss, gd = _cdpo(beta * ((x_hi - y_hi) + (x_lo - y_lo)), eps, beta)
        r = tl.load(r_ptr + offs, mask=ok, other=0.0)
        rew_w = beta * (c - tl.load(cref_ptr + offs, mask=ok, other=0.0))
        rew_l = beta * (r - tl.load(rref_ptr + offs, mask=ok, other=0.0))
        tl.store(loss_ptr + offs, loss, mask=ok)
        tl.store(rew_c_ptr + offs, rew_w, mask=ok)
        tl.store(rew_r_ptr + offs, rew_l, mask=ok)
        if LOSS == AOT:
            tl.store(dc_ptr + ia, gd, mask=ok)
            tl.store(dr_ptr + ia, -gd, mask=ok)
            tl.store(dcref_ptr + ib, -gd, mask=ok)
            tl.store(drref_ptr + ib, gd, mask=ok)
        else:
            tl.store(dc_ptr + ia, gd, mask=ok)
            tl.store(dcref_ptr + ia, -gd, mask=ok)
            tl.store(dr_ptr + ib, -gd, mask=ok)
            tl.store(drref_ptr + ib, gd, mask=ok)
    else:
        r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        if LOSS == SIMPO or LOSS == ORPO or LOSS == CPO:  # reference-free
            if LOSS == CPO:  # sigmoid of beta (c - r), no reference (Liger's CPO)
                hi, lo = _two_diff(c, r)
                loss, g = _cdpo(beta * (hi + lo), eps, beta)
                gw = g
                gl = -g
                rew_w = beta * c
                rew_l = beta * r
            else:
                # The length-averaged log-probs; SimPO's margin or ORPO's log odds ratio of them.
                lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                a = c / lw
                b = r / ll
                rew_w = beta * a
                rew_l = beta * b
                if LOSS == SIMPO:
                    x = beta * (a - b) - gamma
                    loss, g = _cdpo(x, eps, beta)
                    gw = g / lw
                    gl = -g / ll
                else:  # ORPO: x = log odds(a) - log odds(b), odds(l) = e^l / (1 - e^l)
                    # Padding lanes read -1, not 0, where log(1 - e^0) is a (harmless) -inf.
                    am = tl.where(ok, tl.minimum(a, 0.0), -1.0)
                    bm = tl.where(ok, tl.minimum(b, 0.0), -1.0)
                    x = (am - bm) - (_log1mexp(am) - _log1mexp(bm))
                    loss = -beta * _logsigmoid(x)
                    # dx/da = 1 / (1 - e^a); -beta s(-x) / (1 - e^a) = -beta / ((1 - e^a) + e^(a-b) (1 - e^b)),
                    # finite even where a certain chosen completion (a = 0) makes the odds infinite; scaled
                    # by e^-(a-b) when a > b so the exponential cannot overflow.
                    one_m_a = -_expm1(am)
                    one_m_b = -_expm1(bm)
                    e = tl.exp(-tl.abs(am - bm))
                    gw = tl.where(am > bm, -beta * e / (one_m_a * e + one_m_b), -beta / (one_m_a + e * one_m_b)) / lw
                    gl = beta * _sigmoid(-x) / one_m_b / ll
            if has_w != 0:
                w = tl.load(w_ptr + offs, mask=ok, other=1.0)
                loss = loss * w
                gw = gw * w
                gl = gl * w
            tl.store(loss_ptr + offs, loss, mask=ok)
            tl.store(rew_c_ptr + offs, rew_w, mask=ok)
            tl.store(rew_r_ptr + offs, rew_l, mask=ok)
            tl.store(dc_ptr + offs, gw, mask=ok)
            tl.store(dr_ptr + offs, gl, mask=ok)
            tl.store(dcref_ptr + offs, tl.zeros_like(gw), mask=ok)
            tl.store(drref_ptr + offs, tl.zeros_like(gl), mask=ok)
        elif LOSS == KTO:  # unpaired: c = log-prob, cref = reference, r = KL baseline, soft = label
            cref = tl.load(cref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            desirable = tl.load(soft_ptr + offs, mask=ok, other=1.0) > 0.5
            hi, lo = _two_diff(c, cref)
            u_hi, u_lo = _two_diff(hi, r)
            m = tl.where(desirable, 1.0, -1.0)
            x = beta * m * (u_hi + (u_lo + lo))
            loss = _sigmoid(-x)  # 1 - s(x)
            gw = -beta * m * _sigmoid(x) * _sigmoid(-x)
            if has_w != 0:
                w = tl.load(w_ptr + offs, mask=ok, other=1.0)
                loss = loss * w
                gw = gw * w
            tl.store(loss_ptr + offs, loss, mask=ok)
            tl.store(rew_c_ptr + offs, beta * hi, mask=ok)
            tl.store(rew_r_ptr + offs, tl.zeros_like(hi), mask=ok)
            tl.store(dc_ptr + offs, gw, mask=ok)
            tl.store(dr_ptr + offs, tl.zeros_like(gw), mask=ok)
            tl.store(dcref_ptr + offs, -gw, mask=ok)
            tl.store(drref_ptr + offs, tl.zeros_like(gw), mask=ok)
        else:
            cref = tl.load(cref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            rref = tl.load(rref_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            # rho = hi + lo exactly, so a pair whose log-ratios are large (1e4) but nearly equal keeps its
            # margin d: hi_w - hi_l is then exact (Sterbenz) and only the lo terms are rounded.
            rho_w, lo_w = _two_diff(c, cref)
            rho_l, lo_l = _two_diff(r, rref)
            rew_w = beta * rho_w
            rew_l = beta * rho_l
            # f-DPO: the losses of the reward difference read f-scores of the log-ratios instead.
            fw = tl.full(rho_w.shape, 1.0, tl.float32)
            fl = tl.full(rho_l.shape, 1.0, tl.float32)
            if fdiv != 0:
                rho_w, lo_w, fw = _f_score(rho_w, lo_w, fdiv, f_alpha)
                rho_l, lo_l, fl = _f_score(rho_l, lo_l, fdiv, f_alpha)
            z = beta * ((rho_w - rho_l) + (lo_w - lo_l))
            # Losses of d alone set gd = dL/d(d); gw = gd and gl = -gd below.
            gd = tl.zeros_like(z)
            gw = tl.zeros_like(z)
            gl = tl.zeros_like(z)
            if LOSS == SIGMOID or LOSS == RDPO:  # p = 1 - eps (SIGMOID), the soft label (RDPO)
                if LOSS == RDPO:
                    p = tl.load(soft_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                else:
                    p = 1.0 - eps + tl.zeros_like(z)
                loss = -p * _logsigmoid(z) - (1.0 - p) * _logsigmoid(-z)
                # -p s(-z) + (1-p) s(z), not s(z) - p, which cancels for confident pairs.
                gd = beta * (-p * _sigmoid(-z) + (1.0 - p) * _sigmoid(z))
            elif LOSS == ROBUST:
                k = 1.0 / (1.0 - 2.0 * eps)
                loss = k * (-(1.0 - eps) * _logsigmoid(z) + eps * _logsigmoid(-z))
                gd = beta * k * (-(1.0 - eps) * _sigmoid(-z) - eps * _sigmoid(z))
            elif LOSS == HINGE:  # at the kink the derivative is 0, as relu's is in torch.
                loss = tl.maximum(1.0 - z, 0.0)
                gd = tl.where(z < 1.0, -beta, 0.0)
            elif LOSS == IPO:
                lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                x = (rho_w / lw - rho_l / ll) + (lo_w / lw - lo_l / ll) - 0.5 / beta
                loss = x * x
                gw = 2.0 * x / lw
                gl = -2.0 * x / ll
            elif LOSS == EXO_PAIR:
                sp = _sigmoid(z)
                sm = _sigmoid(-z)
                lsp = _logsigmoid(z)
                lsm = _logsigmoid(-z)
                loss = sp * (lsp - log_1m_eps) + sm * (lsm - log_eps)
                # d/dz = s(z) s(-z) (ls(z) - ls(-z) - log(1-eps) + log eps), and ls(z) - ls(-z) = z.
                gd = beta * sp * sm * (z - log_1m_eps + log_eps)
            elif LOSS == NCA_PAIR:
                zw = beta * rho_w
                zl = beta * rho_l
                loss = -_logsigmoid(zw) - 0.5 * _logsigmoid(-zw) - 0.5 * _logsigmoid(-zl)
                gw = beta * (-_sigmoid(-zw) + 0.5 * _sigmoid(zw))
                gl = beta * 0.5 * _sigmoid(zl)
            elif LOSS == BCO_PAIR:
                zw = beta * rho_w
                zl = beta * rho_l
                loss = -_logsigmoid(zw) - _logsigmoid(-zl)
                gw = -beta * _sigmoid(-zw)
                gl = beta * _sigmoid(zl)
            elif LOSS == SPPO_HARD:
                a = rho_w - 0.5 / beta
                bb = rho_l + 0.5 / beta
                loss = a * a + bb * bb
                gw = 2.0 * a
                gl = 2.0 * bb
            elif LOSS == APO_ZERO:  # 1 - s(x) is s(-x), exact for large x.
                zw = beta * rho_w
                zl = beta * rho_l
                loss = _sigmoid(-zw) + _sigmoid(zl)
                gw = -beta * _sigmoid(zw) * _sigmoid(-zw)
                gl = beta * _sigmoid(zl) * _sigmoid(-zl)
            elif LOSS == APO_DOWN:
                zw = beta * (rho_w + lo_w)
                loss = _sigmoid(zw) + _sigmoid(-z)
                gl = beta * _sigmoid(z) * _sigmoid(-z)
                # dL/drho_w = beta (s'(zw) - s'(z)): the two terms nearly cancel when rho_l is small, so
                # the difference is formed from (z - zw)/2 = -beta rho_l / 2 and (zw + z)/2 directly.
                u = -0.5 * beta * (rho_l + lo_l)
                v = beta * ((rho_w - 0.5 * rho_l) + (lo_w - 0.5 * lo_l))
                gw = beta * _dsig_diff(zw, z, u, v)
            elif LOSS == DISCOPOP:
                u = z / tau
                m = _sigmoid(u)
                one_m = _sigmoid(-u)
                lsz = _logsigmoid(z)
                # exp(-z) * m as one exp: exp(-z) alone overflows for z << 0 where m underflows.
                e = tl.exp(-z + _logsigmoid(u))
                loss = -lsz * one_m + e
                # d/dz: -s(-z)(1-m) + ls(z) m(1-m)/tau + exp(-z) m ((1-m)/tau - 1)
                gd = beta * (-_sigmoid(-z) * one_m + lsz * m * one_m / tau + e * (one_m / tau - 1.0))
            elif LOSS == SIGMOID_NORM:
                lw = tl.load(len_c_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                ll = tl.load(len_r_ptr + offs, mask=ok, other=1.0).to(tl.float32)
                x = beta * ((rho_w / lw - rho_l / ll) + (lo_w / lw - lo_l / ll))
                loss = -_logsigmoid(x)
                g = -beta * _sigmoid(-x)
                gw = g / lw
                gl = -g / ll
            elif LOSS == SFT:  # s1 = the batch's chosen NLL (TRL gives it to every pair), s2 = its
                # derivative summed over the pairs, the same for every c (the host never weights sft).
                loss = s1 + tl.zeros_like(z)
                gw = s2 + tl.zeros_like(z)
            if LOSS != SFT:
                gw = (gw + gd) * fw
                gl = (gl - gd) * fl
            if has_w != 0:
                w = tl.load(w_ptr + offs, mask=ok, other=1.0)
                loss = loss * w
                gw = gw * w
                gl = gl * w
            tl.store(loss_ptr + offs, loss, mask=ok)
            tl.store(rew_c_ptr + offs, rew_w, mask=ok)
            tl.store(rew_r_ptr + offs, rew_l, mask=ok)
            tl.store(dc_ptr + offs, gw, mask=ok)
            tl.store(dr_ptr + offs, gl, mask=ok)
            if LOSS == SFT:  # sft reads no reference
                tl.store(dcref_ptr + offs, tl.zeros_like(gw), mask=ok)
            else:
                tl.store(dcref_ptr + offs, -gw, mask=ok)
            tl.store(drref_ptr + offs, -gl, mask=ok)


def preference_head_fwd(c, r, cref, rref, soft, len_c, len_r, *, loss_id, beta, eps, gamma, tau,
                        weights=None, perm_a=None, perm_b=None, fdiv=0, f_alpha=0.5, s1=0.0, s2=0.0):
    """Launch the head on [P] tensors (any float or integer dtype, same device). soft, len_c, len_r and,
    for the reference-free losses, cref and rref may be None when the loss does not read them.
    weights: per-pair WPO weights or None. perm_a / perm_b: int64 sort permutations (aot*). s1, s2: the
    scalars of sft (batch NLL, summed derivative). Returns seven fp32 [P] tensors:
    (losses, rew_c, rew_r, dc, dr, dcref, drref)."""
    P = c.numel()
    outs = tuple(torch.empty(P, dtype=torch.float32, device=c.device) for _ in range(7))
    if P == 0:
        return outs
    # fp32 copies are P-sized, and one dtype per pointer keeps a single compiled variant per loss (the
    # one COMPILE_SPECS describes). An unread pointer still needs a tensor of its type: c stands in for
    # the float ones, a one-element int64 tensor for the permutations.
    c = c.to(torch.float32).contiguous()
    args = [c if t is None else t.to(torch.float32).contiguous()
            for t in (c, r, cref, rref, soft, len_c, len_r, weights)]
    stand_in = None
    if perm_a is None or perm_b is None:
        stand_in = torch.empty(1, dtype=torch.int64, device=c.device)  # never read
    perms = [stand_in if t is None else t.to(torch.int64).contiguous() for t in (perm_a, perm_b)]
    # exo_pair's constants in float64 on the host: fp32 1 - eps is off by up to 6e-8, which is a
    # 6e-5 relative error in log(1 - eps) ~ -eps, the whole loss of a confident pair.
    log_1m_eps = math.log1p(-eps) if eps < 1 else 0.0
    log_eps = math.log(eps) if eps > 0 else 0.0
    grid = (triton.cdiv(P, BLOCK),)
    preference_head_kernel[grid](
        *args, *perms, *outs, P, float(beta), float(eps), float(gamma), float(tau), log_1m_eps, log_eps,
        int(fdiv), float(f_alpha), float(s1), float(s2), int(weights is not None),
        LOSS=int(loss_id), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    return outs


_SIGNATURE = {name: "*fp32" for name in (
    "c_ptr", "r_ptr", "cref_ptr", "rref_ptr", "soft_ptr", "len_c_ptr", "len_r_ptr", "w_ptr")}
_SIGNATURE.update({"perm_a_ptr": "*i64", "perm_b_ptr": "*i64"})
_SIGNATURE.update({name: "*fp32" for name in (
    "loss_ptr", "rew_c_ptr", "rew_r_ptr", "dc_ptr", "dr_ptr", "dcref_ptr", "drref_ptr")})
_SIGNATURE.update({"P": "i32", "beta": "fp32", "eps": "fp32", "gamma": "fp32", "tau": "fp32",
                   "log_1m_eps": "fp32", "log_eps": "fp32", "fdiv": "i32", "f_alpha": "fp32", "s1": "fp32",
                   "s2": "fp32", "has_w": "i32", "LOSS": "constexpr", "BLOCK": "constexpr"})

# Ahead-of-time builds, one per loss id (the runtime settings need no variants), for
# triton.compile(ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"]),
#                target=GPUTarget("cuda", 90, 32), options={"num_warps": s["num_warps"]}).
COMPILE_SPECS = [
    {"fn": preference_head_kernel, "signature": dict(_SIGNATURE),
     "constexprs": {"LOSS": loss_id, "BLOCK": BLOCK}, "num_warps": NUM_WARPS}
    for loss_id in range(NUM_LOSSES)
]
