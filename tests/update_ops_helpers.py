"""Shared machinery of the update-op tests: hypothesis strategies for tensor lists, tensor
factories with controlled memory layouts, and the comparison against the reference.

Tolerance model (``assert_matches``). The fused kernels evaluate the reference expression
element by element in the math type of the dtype (float for float/half/bfloat16, double for
double), with scalars cast once; they may contract ``a - b*c`` into one fused multiply-add
and sum the T learners of ``trajectory_shift_`` in another order than ``torch.mean``. The
reference rounds after every PyTorch op, in the storage dtype (per-op rounding to half /
bfloat16). Both are therefore within ``n_ops * u * scale`` of the exact value, where ``u`` is the
unit roundoff of the dtype and ``scale`` the sum of the magnitudes of the terms of the
expression (the usual forward error bound of a sum of products), so we accept

    |fused - ref| <= k * u * (|ref| + scale) + k * 2u * tiny          (k = 2 * rounded ops)

``scale`` is computed in float64 from the inputs. This bound is tight: for float32 with
values ~1 it is ~1e-6, for float64 ~1e-15, and it does not blow up when a result is the
difference of two large nearly equal terms (where a plain rtol fails for an FMA; where a
plain atol is meaningless for values ~1e20). The last term covers subnormal results. Where
the reference is inf or nan the fused result must be the same inf / nan (equal_nan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from hypothesis import strategies as st

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# unit roundoff: half the distance from 1 to the next float of the dtype
UNIT = {torch.float32: 2.0**-24, torch.float64: 2.0**-53, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
LAYOUTS = ("contig", "transposed", "strided", "offset")


# ------------------------------------------------------------------------ tensor factory
@dataclass
class Held:
    """A tensor under test and the storage-owning tensor it is a view of."""

    t: torch.Tensor
    base: torch.Tensor
    mask: torch.Tensor  # bool, shape of base: True where t lives

    def outside(self) -> torch.Tensor:
        """Elements of the base that ``t`` does not cover (must never be written)."""
        return self.base[~self.mask]


def _view_fn(shape, layout) -> tuple[tuple, Callable[[torch.Tensor], torch.Tensor]]:
    """(shape of the base, function base -> view of `shape` with the given layout)."""
    shape = tuple(shape)
    nd = len(shape)
    if layout == "transposed" and nd >= 2:
        bshape = shape[:-2] + (shape[-1], shape[-2])
        return bshape, lambda b: b.transpose(-1, -2)
    if layout == "strided" and nd >= 1:
        bshape = shape[:-1] + (2 * shape[-1] + 1,)
        return bshape, lambda b: b[..., 1::2]
    if layout in ("offset", "strided", "transposed"):
        n = math.prod(shape)
        return (n + 3,), lambda b: b[3:].view(shape)
    return shape, lambda b: b


def values(shape, gen: torch.Generator, *, scale: float, special: float, nonneg: bool = False):
    """float64 values: scale * N(0, 1) (|.| if nonneg), a fraction `special` of them replaced by
    inf / -inf / nan / 0 / -0 (nonneg: inf / nan / 0)."""
    v = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if nonneg:
        v = v.abs()
    if special > 0 and v.numel():
        pool = torch.tensor([math.inf, math.nan, 0.0] if nonneg else [math.inf, -math.inf, math.nan, 0.0, -0.0],
                            dtype=torch.float64)
        hit = torch.rand(shape, generator=gen, dtype=torch.float64) < special
        pick = torch.randint(len(pool), shape, generator=gen)
        v = torch.where(hit, pool[pick], v)
    return v


def make(shape, dtype, layout, gen, *, scale=1.0, special=0.0, nonneg=False, vals=None) -> Held:
    """A tensor of `shape` and `dtype` whose memory has `layout` inside a larger base filled
    with sentinel values."""
    bshape, view = _view_fn(shape, layout)
    base = torch.randn(bshape, generator=gen, dtype=torch.float64).to(dtype)
    mask = torch.zeros(bshape, dtype=torch.bool)
    view(mask).fill_(True)
    t = view(base)
    assert t.shape == tuple(shape)
    if vals is None:
        vals = values(shape, gen, scale=scale, special=special, nonneg=nonneg)
    with torch.no_grad():
        t.copy_(vals.to(dtype))
    if layout == "transposed" and len(shape) >= 2 and shape[-1] > 1 and shape[-2] > 1 and t.numel():
        assert not t.is_contiguous()
    return Held(t, base, mask)


# ------------------------------------------------------------------------ strategies
@st.composite
def shapes(draw, *, big_every: int = 25):
    """0-d, 1-d .. 3-d shapes with 0-sized dims; now and then a long 1-d tensor (vector loop
    bodies, tails and the split of the parallel loop across tensors)."""
    if draw(st.integers(0, big_every)) == 0:
        return (draw(st.integers(17, 4100)),)
    nd = draw(st.integers(0, 3))
    return tuple(draw(st.lists(st.integers(0, 6), min_size=nd, max_size=nd)))


dtypes = st.sampled_from(FLOATS)


def scale_for(dtype) -> st.SearchStrategy:
    """Value magnitudes: wide for float / double; for half / bfloat16 about 1, so that neither
    side overflows an intermediate the other keeps finite (the reference rounds every op to the
    storage dtype, the kernel computes in float)."""
    if dtype in (torch.float16, torch.bfloat16):
        return st.sampled_from([0.5, 1.0, 2.0])
    return st.sampled_from([1e-20, 1e-3, 1.0, 1e3, 1e20])


specials = st.sampled_from([0.0, 0.0, 0.02, 0.3])


def real(lo: float, hi: float) -> st.SearchStrategy:
    """A float scalar in [lo, hi], including both ends."""
    return st.one_of(st.just(lo), st.just(hi), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


# ------------------------------------------------------------------------ comparison
def clone_lists(*lists):
    """Contiguous clones of tensor lists that keep the aliasing between them (a tensor that
    appears twice is cloned once)."""
    memo: dict[int, torch.Tensor] = {}

    def c(t):
        if id(t) not in memo:
            memo[id(t)] = t.detach().clone(memory_format=torch.contiguous_format)
        return memo[id(t)]

    return [None if lst is None else [c(t) for t in lst] for lst in lists]


def assert_matches(actual, expected, *, scale=None, k: int, what: str, extra_rel=None):
    """`actual` (fused) equals `expected` (reference) within the bound of the module docstring.

    scale: float64 magnitudes of the terms of the expression (same shape), or None (relative
    to |expected| only). extra_rel: an extra relative error budget per element (float64), for
    results that divide by a value that itself carries a rounding error.
    """
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    dtype = expected.dtype
    u = UNIT[dtype]
    a, e = actual.detach().double(), expected.detach().double()
    fin = torch.isfinite(e)
    same = (a == e) | (a.isnan() & e.isnan())
    mag = e.abs()
    if scale is not None:
        mag = mag + torch.nan_to_num(scale.double().abs(), nan=0.0, posinf=0.0)
    tol = k * u * mag + k * 2 * u * torch.finfo(dtype).tiny
    if extra_rel is not None:
        tol = tol + e.abs() * torch.nan_to_num(extra_rel.double().abs(), nan=0.0, posinf=0.0)
    ok = torch.where(fin, torch.isfinite(a) & ((a - e).abs() <= tol), same)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:5].tolist()
        rows = [f"  at {tuple(i)}: fused {a[tuple(i)].item()!r} ref {e[tuple(i)].item()!r} "
                f"tol {tol[tuple(i)].item():.3g}" for i in bad]
        raise AssertionError(f"{what} ({dtype}, {int((~ok).sum())} of {ok.numel()} elements differ):\n"
                             + "\n".join(rows))


def assert_same(actual, expected, what: str):
    """Bitwise equal, nan == nan (for tensors an op must not write)."""
    assert actual.shape == expected.shape
    a, e = actual.detach(), expected.detach()
    if a.dtype.is_floating_point:
        same = (a == e) | (a.isnan() & e.isnan())
        same &= torch.signbit(a) == torch.signbit(e)
    else:
        same = a == e
    assert bool(same.all()), f"{what} was changed"


def snapshot(helds):
    """(Held, clone of its base) pairs: see check_untouched."""
    return [(h, h.base.clone()) for h in helds]


def check_outside(snap, what: str):
    """No write outside the views: every base element not covered by its view is unchanged."""
    for i, (h, before) in enumerate(snap):
        assert_same(h.outside(), before[~h.mask], f"{what}[{i}]: memory outside the view")


def d64(t: Optional[torch.Tensor]) -> torch.Tensor:
    return t.detach().double()


def all_tensors(args: dict) -> list[torch.Tensor]:
    """Every tensor of an op's keyword arguments: the tensors and the tensors of the lists."""
    out = []
    for v in args.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += [t for t in v if isinstance(t, torch.Tensor)]
    return out
