"""Pure-PyTorch tile-binned rasterizer with a hand-written backward pass (CPU or CUDA).

Semantics are those of the 3DGS/gsplat CUDA kernels: per pixel, Gaussians are composited front to back in
order of camera depth with alpha = min(0.99, o * exp(-sigma)), sigma = 0.5 d^T conic d, pixels with
alpha < 1/255 skip the Gaussian, and a pixel stops before the Gaussian that would bring its transmittance
below 1e-4.

How it stays fast without a Gaussian x pixel tensor:

1. *Spans.* Each visible Gaussian's alpha >= 1/255 region is an ellipse; for every pixel row it covers we
   solve the quadratic for the exact x-interval. A span is (Gaussian, row, x0, length); Gaussians are
   enumerated front to back, so spans are in depth order.
2. *Tile binning and chunks.* Spans are binned to (camera, 16-pixel tile row) units; consecutive units are
   grouped into chunks holding at most ``chunk_pairs`` (pixel, Gaussian) pairs, so memory stays bounded on
   large images. Each chunk covers a contiguous block of whole tile rows.
3. *Pairs.* Within a chunk the spans expand into (pixel, Gaussian) pairs, only for pixels inside an
   ellipse, and a stable sort by pixel index yields each pixel's front-to-back list (CSR layout).
4. *Compositing.* Transmittance is an exclusive segmented cumulative sum of log(1 - alpha) (float64 global
   cumsum minus the value at each pixel's segment start); the weighted sum of Gaussian features is one
   sparse CSR x dense matrix product. The backward pass uses the closed-form 3DGS gradients with suffix sums,
   and reduces per-pair terms first per span, then per Gaussian (the span's dx is affine in the pixel offset).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.gaussians.projection import ALPHA_THRESHOLD, project_gaussians
from pipeline.gaussians.types import BackendRaster

MAX_ALPHA = 0.99  # 3DGS clamps alpha so a single Gaussian never makes a pixel fully opaque
MIN_TRANSMITTANCE = 1e-4  # 3DGS stops compositing a pixel before its transmittance falls below this
_LOG_MIN_T = math.log(MIN_TRANSMITTANCE)
_SLACK_PX = 1e-3  # spans are widened a little; the exact alpha test below removes what does not belong
DEFAULT_CHUNK_PAIRS = 1 << 22


@dataclass
class _Spans:
    """Row spans of visible Gaussians' footprints, in (camera, depth) order; all [S], no gradients.

    gid: flat Gaussian slot c*N+n; pix0: flat pixel index (c*H+y)*W+x0 of the span's first pixel;
    length: pixels in the span; dx0, dy: pixel centre minus Gaussian mean at the first pixel;
    unit: (camera, tile row) bin c*n_tile_rows + y // tile_size.
    """

    gid: Tensor
    pix0: Tensor
    length: Tensor
    dx0: Tensor
    dy: Tensor
    unit: Tensor

    def select(self, mask: Tensor) -> _Spans:
        idx = mask.nonzero().squeeze(1)
        return _Spans(*(t.index_select(0, idx) for t in (self.gid, self.pix0, self.length, self.dx0, self.dy,
                                                        self.unit)))


@dataclass
class _Pairs:
    """The (pixel, Gaussian) pairs of one chunk, K of them, in two orders.

    Span order (as enumerated: span after span, each span's pixels left to right) makes per-span and
    per-Gaussian reductions contiguous; pixel order (pixels ascending, front to back within a pixel) is what
    compositing needs. ``perm`` maps pixel order to span order.

    span_crow: [S+1] CSR pointers of the spans over span-ordered pairs; pix_span, off_span: [K] chunk-local
    pixel and offset within its span of each span-ordered pair; perm: [K]; pix: [K] chunk-local pixel,
    pixel order (ascending); gid: [K] flat Gaussian slot, pixel order; alpha: [K] clamped alpha (0 below
    1/255), pixel order;
    crow: [P+1] CSR pointers of the chunk's P pixels over pixel-ordered pairs;
    gauss_crow: [G+1] CSR pointers of the chunk's G Gaussians over its spans (a Gaussian's spans are
    consecutive); gauss_ids: [G] their flat slots.
    """

    span_crow: Tensor
    pix_span: Tensor
    off_span: Tensor
    perm: Tensor
    pix: Tensor
    gid: Tensor
    alpha: Tensor
    crow: Tensor
    gauss_crow: Tensor
    gauss_ids: Tensor


def _segment_ids(lengths: Tensor, total: int) -> Tensor:
    """For consecutive segments of ``lengths`` (>= 0) covering ``total`` elements: each element's segment.

    Same as ``repeat_interleave(arange(S), lengths)``, which runs a parallel loop with grain 1 on CPU and
    stalls for milliseconds when the cores are busy.
    """
    marks = torch.zeros(total + 1, dtype=torch.long, device=lengths.device)
    ends = torch.cumsum(lengths, 0)[:-1]
    marks.index_add_(0, ends, torch.ones_like(ends))
    return torch.cumsum(marks[:total], 0)


def _build_spans(means2d: Tensor, conics: Tensor, opac: Tensor, depths: Tensor, visible: Tensor, n_gauss: int,
                 width: int, height: int, tile_size: int) -> _Spans:
    """Exact per-row x-intervals of every visible Gaussian's alpha >= 1/255 ellipse.

    Inputs are flattened over M = C*N slots (slot m is camera m // n_gauss) and detached:
    means2d [M,2], conics [M,3], opac [M], depths [M], visible [M] bool.
    """
    dev = means2d.device
    vis = visible.nonzero().squeeze(1)
    cam = vis // n_gauss
    order = torch.argsort(depths.index_select(0, vis), stable=True)
    # by camera, then front to back
    order = order.index_select(0, torch.argsort(cam.index_select(0, order), stable=True))
    vis, cam = vis.index_select(0, order), cam.index_select(0, order)
    mx, my = means2d.index_select(0, vis).unbind(-1)
    a, b, c = conics.index_select(0, vis).unbind(-1)
    # alpha = o exp(-sigma) >= 1/255  <=>  sigma = (a dx^2 + 2b dx dy + c dy^2) / 2 <= t
    t = torch.log(opac.index_select(0, vis) / ALPHA_THRESHOLD).clamp_min(0)
    det = a * c - b * b
    half_y = torch.sqrt(2 * t * a / det)  # the inverse conic's yy entry is a / det
    y_lo = torch.ceil(my - half_y - 0.5 - _SLACK_PX).clamp(min=0)
    y_hi = torch.floor(my + half_y - 0.5 + _SLACK_PX).clamp(max=height - 1)
    n_rows = (y_hi - y_lo + 1).clamp(min=0).long()

    # one entry per (Gaussian, pixel row): solve the quadratic in dx for that row
    n_total = int(n_rows.sum())
    row_g = _segment_ids(n_rows, n_total)
    first_row = torch.cumsum(n_rows, 0) - n_rows
    y = (y_lo.long() - first_row).index_select(0, row_g) + torch.arange(n_total, device=dev)
    dy = (y + 0.5).to(my.dtype) - my.index_select(0, row_g)
    ag = a.index_select(0, row_g)
    disc = 2 * ag * t.index_select(0, row_g) - det.index_select(0, row_g) * dy * dy
    half_x = torch.sqrt(disc.clamp_min(0)) / ag + _SLACK_PX
    centre_x = mx.index_select(0, row_g) - b.index_select(0, row_g) * dy / ag
    x_lo = torch.ceil(centre_x - half_x - 0.5).clamp(min=0)
    x_hi = torch.floor(centre_x + half_x - 0.5).clamp(max=width - 1)
    length = (x_hi - x_lo + 1).long()

    keep = ((disc >= 0) & (length > 0)).nonzero().squeeze(1)
    row_g, y, dy, x_lo, length = (v.index_select(0, keep) for v in (row_g, y, dy, x_lo, length))
    cam_r = cam.index_select(0, row_g)
    return _Spans(
        gid=vis.index_select(0, row_g),
        pix0=(cam_r * height + y) * width + x_lo.long(),
        length=length,
        dx0=(x_lo + 0.5) - mx.index_select(0, row_g),
        dy=dy,
        unit=cam_r * (-(-height // tile_size)) + y // tile_size,
    )


def _chunk_ranges(spans: _Spans, n_cams: int, width: int, height: int, tile_size: int,
                  chunk_pairs: int) -> list[tuple[int, int, int, int]]:
    """Group consecutive (camera, tile row) units into chunks of about ``chunk_pairs`` pairs.

    Returns (first unit, end unit, first pixel, end pixel) per chunk; together the chunks cover every pixel.
    """
    n_ty = -(-height // tile_size)
    per_unit = torch.zeros(n_cams * n_ty, dtype=torch.long, device=spans.length.device)
    per_unit.index_add_(0, spans.unit, spans.length)
    before = torch.cumsum(per_unit, 0) - per_unit
    _, sizes = torch.unique_consecutive(before // max(1, chunk_pairs), return_counts=True)

    def pixel(unit: int, row_in_unit: int) -> int:
        cam, ty = divmod(unit, n_ty)
        return (cam * height + min(height, ty * tile_size + row_in_unit)) * width

    ranges, u0 = [], 0
    for size in sizes.tolist():
        ranges.append((u0, u0 + size, pixel(u0, 0), pixel(u0 + size - 1, tile_size)))
        u0 += size
    return ranges


def _build_pairs(spans: _Spans, pix_lo: int, n_pix: int, conics: Tensor, opac: Tensor) -> _Pairs:
    """Expand a chunk's spans into (pixel, Gaussian) pairs and order them by pixel."""
    dev = spans.length.device
    n_spans = spans.length.numel()
    span_crow = torch.zeros(n_spans + 1, dtype=torch.long, device=dev)
    torch.cumsum(spans.length, 0, out=span_crow[1:])
    n_pairs = int(span_crow[-1])
    span = _segment_ids(spans.length, n_pairs)
    off_i = torch.arange(n_pairs, device=dev) - span_crow.index_select(0, span)
    pix_span = (spans.pix0 - pix_lo).index_select(0, span) + off_i

    # sigma along a span is a quadratic in the pixel offset: evaluate its coefficients once per span
    a, b, c = conics.index_select(0, spans.gid).unbind(-1)
    dx0, dy = spans.dx0, spans.dy
    q2 = 0.5 * a
    q1 = a * dx0 + b * dy
    q0 = torch.log(opac.index_select(0, spans.gid)) - (0.5 * a * dx0 * dx0 + b * dx0 * dy + 0.5 * c * dy * dy)
    off = off_i.to(dx0.dtype)
    sigma = q2.index_select(0, span).mul_(off).add_(q1.index_select(0, span)).mul_(off)
    alpha = q0.index_select(0, span).sub_(sigma).exp_().clamp_(max=MAX_ALPHA)
    alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)

    # radix sort cost grows with the key width: 16-bit keys whenever the chunk's pixel index fits
    key_dtype = torch.int16 if n_pix <= torch.iinfo(torch.int16).max else torch.int32
    pix, perm = torch.sort(pix_span.to(key_dtype), stable=True)
    counts = torch.bincount(pix, minlength=n_pix)
    crow = torch.zeros(n_pix + 1, dtype=torch.long, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    gauss_ids, spans_per_gauss = torch.unique_consecutive(spans.gid, return_counts=True)
    gauss_crow = torch.zeros(gauss_ids.numel() + 1, dtype=torch.long, device=dev)
    torch.cumsum(spans_per_gauss, 0, out=gauss_crow[1:])
    return _Pairs(span_crow=span_crow, pix_span=pix_span, off_span=off_i, perm=perm, pix=pix.long(),
                  gid=spans.gid.index_select(0, span).index_select(0, perm),
                  alpha=alpha.index_select(0, perm), crow=crow, gauss_crow=gauss_crow, gauss_ids=gauss_ids)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix; sparse x dense products are the fastest segmented reductions torch has on CPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _padded_cumsum(values: Tensor) -> Tensor:
    """[K] -> [K+1] float64 cumulative sum starting at 0 (entry i sums values[:i])."""
    out = torch.zeros(values.numel() + 1, dtype=torch.float64, device=values.device)
    torch.cumsum(values.double(), 0, out=out[1:])
    return out


def _to_span_order(perm: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
    """Scatter per-pair values [K] from pixel order to span order."""
    return tuple(torch.empty_like(v).scatter_(0, perm, v) for v in values)


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of one chunk: per-Gaussian 2D parameters -> [P, F+1] (features, alpha).

    Inputs are flattened over the M = C*N slots: means2d [M,2], conics [M,3], opac [M], feats [M,F].
    The pair plan (spans, pairs) was built from the detached values of these same tensors; means2d enters
    only for its gradient.
    """

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, opac: Tensor, feats: Tensor,  # type: ignore[override]
                spans: _Spans, pairs: _Pairs) -> Tensor:
        alpha = pairs.alpha
        n_pix = pairs.crow.numel() - 1
        log_keep = torch.log1p(-alpha)
        # Inclusive prefix sum of log(1 - alpha) within each pixel: a global float64 cumsum minus its value
        # before the pixel's first pair (float32 would lose the small per-pixel sums in the large total).
        acc = _padded_cumsum(log_keep)
        at_first = acc.index_select(0, pairs.crow[:-1]).index_select(0, pairs.pix)
        log_t_incl = (acc[1:] - at_first).to(alpha.dtype)
        include = (log_t_incl >= _LOG_MIN_T).to(alpha.dtype)  # 3DGS stops before T would drop below 1e-4
        trans = log_t_incl.sub_(log_keep).exp_()  # transmittance in front of each Gaussian
        weight = (alpha * trans).mul_(include)
        f_ext = torch.cat((feats, torch.ones_like(feats[:, :1])), dim=1)  # the ones column yields alpha
        out = _csr(pairs.crow, pairs.gid, weight, (n_pix, feats.shape[0])) @ f_ext
        ctx.save_for_backward(conics, opac, f_ext, trans, weight, include)
        ctx.spans, ctx.pairs = spans, pairs
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        conics, opac, f_ext, trans, weight, include = ctx.saved_tensors
        spans, pairs = ctx.spans, ctx.pairs
        n_spans, n_pix, n_feat = spans.length.numel(), grad_out.shape[0], f_ext.shape[1]
        need_geom = any(ctx.needs_input_grad[:3])
        grad_out = grad_out.contiguous()
        alpha = pairs.alpha
        if need_geom:
            # dot_k = f_(Gaussian of k) . g_(pixel of k), channel by channel (1-D gathers are the fast ones)
            f_t, g_t = f_ext.t().contiguous(), grad_out.t().contiguous()
            dot = g_t[-1].index_select(0, pairs.pix)  # the alpha channel's feature is 1
            for ch in range(n_feat - 1):
                dot.addcmul_(f_t[ch].index_select(0, pairs.gid), g_t[ch].index_select(0, pairs.pix))
            # S_k = sum of w_j dot_j over the Gaussians j behind k in the same pixel (segmented suffix sum)
            acc = _padded_cumsum(weight * dot)
            at_last = acc.index_select(0, pairs.crow[1:]).index_select(0, pairs.pix)
            suffix = (at_last - acc[1:]).to(alpha.dtype)
            d_alpha = (trans * dot).sub_(suffix.div_(1 - alpha)).mul_(include)
            # dL/dsigma = -alpha dL/dalpha, except where alpha is clamped at its maximum
            d_sigma = d_alpha.mul_(alpha.neg().masked_fill_(alpha >= MAX_ALPHA, 0.0))
            w_span, u_span = _to_span_order(pairs.perm, weight, d_sigma)
        else:
            (w_span,) = _to_span_order(pairs.perm, weight)

        # per span: W^T grad (feature gradient) as a spans x pixels CSR product
        per_span = [_csr(pairs.span_crow, pairs.pix_span, w_span, (n_spans, n_pix)) @ grad_out]
        if need_geom:
            # per span: sums of u, u*off, u*off^2 (u = dL/dsigma) as a CSR product against [1, off, off^2];
            # along a span dx = dx0 + off and dy is constant, so these give every sum the gradients need
            max_len = int(spans.length.max()) if n_spans else 0
            off = torch.arange(max_len, dtype=alpha.dtype, device=alpha.device)
            off_pow = torch.stack((torch.ones_like(off), off, off * off), dim=1)
            u_sums = _csr(pairs.span_crow, pairs.off_span, u_span, (n_spans, max_len)) @ off_pow
            u0, u1, u2 = u_sums.unbind(1)
            dx0, dy = spans.dx0, spans.dy
            m1 = dx0 * u0 + u1  # sum of u dx
            per_span.append(torch.stack((u0, m1, dy * u0, dx0 * m1 + dx0 * u1 + u2, dy * m1, dy * dy * u0),
                                        dim=1))
        # per Gaussian: sum over its (consecutive) spans, again as a CSR product
        n_gauss = pairs.gauss_ids.numel()
        span_ids = torch.arange(n_spans, device=f_ext.device)
        ones = torch.ones(n_spans, dtype=f_ext.dtype, device=f_ext.device)
        per_gauss = _csr(pairs.gauss_crow, span_ids, ones, (n_gauss, n_spans)) @ torch.cat(per_span, dim=1)
        sums = torch.zeros(f_ext.shape[0], per_gauss.shape[1], dtype=f_ext.dtype, device=f_ext.device)
        sums.index_copy_(0, pairs.gauss_ids, per_gauss)

        d_feats = sums[:, :n_feat - 1] if ctx.needs_input_grad[3] else None
        if not need_geom:
            return None, None, None, d_feats, None, None
        s_u, s_dx, s_dy, s_dxdx, s_dxdy, s_dydy = sums[:, n_feat:].unbind(1)
        a, b, c = conics.unbind(-1)
        d_means2d = torch.stack((-(a * s_dx + b * s_dy), -(b * s_dx + c * s_dy)), dim=1)
        d_conics = torch.stack((0.5 * s_dxdx, s_dxdy, 0.5 * s_dydy), dim=1)
        d_opac = -s_u / opac.clamp_min(1e-12)
        return d_means2d, d_conics, d_opac, d_feats, None, None


def rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
                    viewmats: Tensor, Ks: Tensor, width: int, height: int, near: float = 0.01,
                    far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
                    chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> BackendRaster:
    """Project and composite; differentiable in every tensor input.

    means [N,3], quats [N,4] wxyz, scales [N,3] linear, opacities [N] in [0,1], features [C,N,F]
    (per-camera colours and any extra channels), viewmats [C,4,4], Ks [C,3,3]. ``chunk_pairs`` bounds the
    (pixel, Gaussian) pairs built at once, and so the temporaries (whole tile rows are never split); what
    the backward pass needs, about 60 bytes per pair, is kept for every chunk until backward.
    """
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d)
    n_cams, n_gauss = proj.depths.shape
    n_slots = n_cams * n_gauss
    means2d = proj.means2d.reshape(n_slots, 2)
    conics = proj.conics.reshape(n_slots, 3)
    opac = opacities.expand(n_cams, n_gauss).reshape(n_slots)
    # camera depth rides along as one more feature channel, for the expected-depth image
    feats = torch.cat((features, proj.depths.unsqueeze(-1)), dim=-1).reshape(n_slots, -1)

    with torch.no_grad():
        conics_d, opac_d = conics.detach(), opac.detach()
        spans = _build_spans(means2d.detach(), conics_d, opac_d, proj.depths.detach().reshape(n_slots),
                             proj.visible.reshape(n_slots), n_gauss, width, height, tile_size)
        ranges = _chunk_ranges(spans, n_cams, width, height, tile_size, chunk_pairs)
    blocks = []
    for u0, u1, pix_lo, pix_hi in ranges:
        with torch.no_grad():
            chunk = spans if len(ranges) == 1 else spans.select((spans.unit >= u0) & (spans.unit < u1))
            pairs = _build_pairs(chunk, pix_lo, pix_hi - pix_lo, conics_d, opac_d)
        blocks.append(_Composite.apply(means2d, conics, opac, feats, chunk, pairs))
    out = (torch.cat(blocks) if len(blocks) > 1 else blocks[0]).reshape(n_cams, height, width, -1)
    alpha = out[..., -1:]
    radii = proj.radii.max(dim=-1).values
    return BackendRaster(features=out[..., :-2], depth=out[..., -2:-1] / alpha.clamp_min(1e-10), alpha=alpha,
                         means2d=proj.means2d, depths=proj.depths, radii=radii, visible=proj.visible)


def count_pairs(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
                width: int, height: int, near: float = 0.01, far: float = 1e10, eps2d: float = 0.3) -> int:
    """(pixel, Gaussian) pairs inside footprints (alpha >= 1/255, up to the span slack): the work done."""
    with torch.no_grad():
        proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near, far,
                                 eps2d)
        n_cams, n_gauss = proj.depths.shape
        m = n_cams * n_gauss
        spans = _build_spans(proj.means2d.reshape(m, 2), proj.conics.reshape(m, 3),
                             opacities.expand(n_cams, n_gauss).reshape(m), proj.depths.reshape(m),
                             proj.visible.reshape(m), n_gauss, width, height, tile_size=16)
        return int(spans.length.sum())
