"""A register-blocked float32 GEMM micro-kernel for the per-step recurrent products.

``G[i, go + j] = sum_k V[i, k] * RT[k, j]`` for a batch of states V (nb, K) and the
transposed weights RT (K, N), packed once at load into panels of :data:`NR` columns
(``pack_panels``: (P, K, NR), zero-padded past N).

numba cannot keep a tile of accumulators in registers across the k loop by itself (the
hand kernel of :mod:`kernels_cpu` reads and writes G at every k chunk, and its dot-product
variant pays a horizontal sum per output), so the inner tile is written as LLVM IR: MR
rows x 32 columns held in 2*MR vector registers, per k two vector loads of the panel, MR
broadcasts of V and 2*MR fused multiply-adds, the loads-per-FMA ratio of BLAS
micro-kernels. The vectors are 16 floats wide (zmm registers with AVX-512; LLVM splits
them in two ymm registers on AVX2 machines). float32 only.

With ``NUMBA_DISABLE_JIT`` the tiles fall back to NumPy products (tests of the no-JIT job).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _cache  # noqa: F401  (numba caches the engine's kernels outside the package; before any @njit)
from . import config

_FM = config.FASTMATH
_EM = config.ERROR_MODEL

#: Panel width (columns of RT per packed panel): two 16-float vectors.
NR = 32

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, 16)
_I32 = ir.IntType(32)
_I8P = ir.IntType(8).as_pointer()


def pack_panels(RT: np.ndarray) -> np.ndarray:
    """(K, N) -> (P, K, NR): the column panels of RT, zero-padded to P*NR columns."""
    K, N = RT.shape
    P = -(-N // NR)
    out = np.zeros((P, K, NR), RT.dtype)
    for p in range(P):
        w = min(NR, N - p * NR)
        out[p, :, :w] = RT[:, p * NR:p * NR + w]
    return out


def padded_width(N: int) -> int:
    """Columns of G a packed product of N outputs writes (a multiple of NR)."""
    return -(-N // NR) * NR


def _is_f32_c(a, ndim):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == ndim and a.layout == "C"


def _make_tile(mr, prefetch=False, npan=1):
    """An intrinsic ``tile(V, i0, RP, r0, K, G, go)``: G[i0:i0+mr, go:go+npan*NR] =
    V[i0:i0+mr] @ (npan adjacent panels from RP row r0, each K rows), accumulated in
    registers (2*mr*npan vectors) and stored once."""

    @intrinsic
    def tile(typingctx, V, i0, RP, r0, K, G, go):
        if not (_is_f32_c(V, 2) and _is_f32_c(RP, 2) and _is_f32_c(G, 2)):
            return None
        for t in (i0, r0, K, go):
            if not isinstance(t, types.Integer):
                return None
        sig = types.void(V, i0, RP, r0, K, G, go)

        def codegen(context, builder, sig, args):
            vt, it, rt, r0t, kt, gt, got = sig.args
            Va, i0v, RPa, r0v, Kv, Ga, gov = args
            intp = context.get_value_type(types.intp)
            i0v = context.cast(builder, i0v, it, types.intp)
            r0v = context.cast(builder, r0v, r0t, types.intp)
            Kv = context.cast(builder, Kv, kt, types.intp)
            gov = context.cast(builder, gov, got, types.intp)
            va = context.make_array(vt)(context, builder, Va)
            ra = context.make_array(rt)(context, builder, RPa)
            ga = context.make_array(gt)(context, builder, Ga)
            vs0 = cgutils.unpack_tuple(builder, va.strides, 2)[0]
            rs0 = cgutils.unpack_tuple(builder, ra.strides, 2)[0]
            gs0 = cgutils.unpack_tuple(builder, ga.strides, 2)[0]
            four = ir.Constant(intp, 4)
            vdata = builder.bitcast(va.data, _I8P)
            rdata = builder.bitcast(ra.data, _I8P)
            gdata = builder.bitcast(ga.data, _I8P)
            rows = [builder.gep(vdata, [builder.mul(builder.add(i0v, ir.Constant(intp, m)), vs0)]) for m in range(mr)]
            zero = ir.Constant(_VEC, None)
            nv = 2 * npan  # vectors per row of the tile
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(mr)]
            undef = ir.Constant(_VEC, ir.Undefined)
            splat = ir.Constant(ir.VectorType(_I32, 16), [0] * 16)
            pbase = builder.gep(rdata, [builder.mul(r0v, rs0)])
            pf = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [_I8P, _I32, _I32, _I32]), "llvm.prefetch.p0i8")
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32")
            with cgutils.for_range(builder, Kv) as loop:
                k = loop.index
                w = []
                for q in range(npan):  # row k of panel q
                    kq = builder.add(k, builder.mul(Kv, ir.Constant(intp, q))) if q else k
                    pk = builder.bitcast(builder.gep(pbase, [builder.mul(kq, rs0)]), _VEC.as_pointer())
                    w += [builder.load(pk, align=4), builder.load(builder.gep(pk, [ir.Constant(_I32, 1)]), align=4)]
                koff = builder.mul(k, four)
                if prefetch:  # the same row of the next panel: hides memory latency
                    nxt = builder.gep(pbase, [builder.mul(builder.add(k, Kv), rs0)])
                    for off in (0, 64):
                        builder.call(pf, [builder.gep(nxt, [ir.Constant(intp, off)]), ir.Constant(_I32, 0),
                                          ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
                for m in range(mr):
                    a = builder.load(builder.bitcast(builder.gep(rows[m], [koff]), _F32.as_pointer()), align=4)
                    s = builder.shuffle_vector(builder.insert_element(undef, a, ir.Constant(_I32, 0)), undef, splat)
                    for n in range(nv):
                        builder.store(builder.call(fma, [s, w[n], builder.load(acc[m][n])]), acc[m][n])
            goff = builder.mul(gov, four)
            for m in range(mr):
                row = builder.gep(gdata, [builder.add(builder.mul(builder.add(i0v, ir.Constant(intp, m)), gs0), goff)])
                gp = builder.bitcast(row, _VEC.as_pointer())
                for n in range(nv):
                    builder.store(builder.load(acc[m][n]), builder.gep(gp, [ir.Constant(_I32, n)]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _make(mr, prefetch=False, npan=1):
    """``tile(V, i0, RP, r0, K, G, go)`` for mr rows and npan panels: the IR tile for
    float32 arrays, a plain loop for other dtypes (float64 models), NumPy products when the
    JIT is disabled."""

    def tile(V, i0, RP, r0, K, G, go):
        for q in range(npan):
            G[i0:i0 + mr, go + q * NR:go + (q + 1) * NR] = V[i0:i0 + mr] @ RP[r0 + q * K:r0 + (q + 1) * K]

    if numba.config.DISABLE_JIT:
        return tile
    ir_tile = _make_tile(mr, prefetch, npan)

    @overload(tile, jit_options={"fastmath": _FM, "error_model": _EM})
    def _tile(V, i0, RP, r0, K, G, go):
        if _is_f32_c(V, 2) and _is_f32_c(RP, 2) and _is_f32_c(G, 2):
            def impl(V, i0, RP, r0, K, G, go):
                ir_tile(V, i0, RP, r0, K, G, go)
        else:
            def impl(V, i0, RP, r0, K, G, go):
                for q in range(npan):
                    for m in range(mr):
                        g = G[i0 + m, go + q * NR:go + (q + 1) * NR]
                        v = V[i0 + m]
                        for j in range(NR):
                            g[j] = 0.0
                        for k in range(K):
                            a = v[k]
                            w = RP[r0 + q * K + k]
                            for j in range(NR):
                                g[j] += a * w[j]
        return impl

    return tile


_tile8 = _make(8)
_tile8p = _make(8, True)
_tile4 = _make(4)
_tile2 = _make(2)
_tile1 = _make(1)
_tile1x4 = _make(1, npan=4)  # one row: 4 panels at once, 8 independent accumulators


#: Rows per block of a long product (the input projection of many steps): the block's V
#: (MC*K floats) stays in L2 while every panel passes over it.
MC = 128


@njit(cache=True, fastmath=_FM, error_model=_EM, nogil=True)
def matmul_packed(V, nb, RP3, G, go):
    """G[i, go:go+P*NR] = V[i] @ RT for rows i < nb, RT packed by :func:`pack_panels` as RP3
    (P, K, NR). G needs room for the padded width P*NR (the padding columns get zeros).

    Blocks of MC rows, panels inside: each panel (K*NR floats) is read once per block and
    reused from cache by every tile of 8 rows; the first tile prefetches the next panel.
    """
    P = RP3.shape[0]
    K = RP3.shape[1]
    if K == 0:
        return
    RP = RP3.reshape((P * K, NR))  # the panels one after the other: row r0 + k of panel p
    if nb == 1:  # a matrix-vector product: several panels per pass for independent sums
        p = 0
        while p + 4 <= P:
            _tile1x4(V, 0, RP, p * K, K, G, go + p * NR)
            p += 4
        while p < P:
            _tile1(V, 0, RP, p * K, K, G, go + p * NR)
            p += 1
        return
    for b0 in range(0, nb, MC):
        b1 = min(b0 + MC, nb)
        for p in range(P):
            r0 = p * K
            jo = go + p * NR
            i = b0
            if b1 - i >= 8:
                _tile8p(V, i, RP, r0, K, G, jo)
                i += 8
            while b1 - i >= 8:
                _tile8(V, i, RP, r0, K, G, jo)
                i += 8
            if b1 - i >= 4:
                _tile4(V, i, RP, r0, K, G, jo)
                i += 4
            if b1 - i >= 2:
                _tile2(V, i, RP, r0, K, G, jo)
                i += 2
            if b1 - i >= 1:
                _tile1(V, i, RP, r0, K, G, jo)
