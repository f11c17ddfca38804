"""The decoder's native kernels as Python calls: argument checks, ``ctypes`` signatures and
output allocation (see :mod:`mobilesam.native`)."""

from __future__ import annotations

import ctypes
import functools
import time
from types import SimpleNamespace

import torch


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Segment(ctypes.Structure):
    """``mobilesam_segment`` of ``layer_norm_stats.c``."""

    _fields_ = [
        ("start", ctypes.c_int),
        ("stop", ctypes.c_int),
        ("heads", ctypes.c_int),
        ("d", ctypes.c_int),
        ("summed", ctypes.c_int),
        ("values", ctypes.c_void_p),
        ("cross", ctypes.c_void_p),
    ]


def _factored_part(
    q: torch.Tensor,
    coef: torch.Tensor | None,
    z: torch.Tensor | None,
    a: torch.Tensor | None,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int, int]:
    """The prompt-side arguments both cross-attention kernels take, checked and contiguous:
    ``q``, ``coef``, ``a``, the rank ``m`` and the prompt stride of ``z`` (whose rows must be
    ``n`` contiguous values; 0 and 0 without ``z``)."""
    if z is None:
        return q.contiguous(), None, None if a is None else a.contiguous(), 0, 0
    assert z.stride(-1) == 1 and z.stride(-2) == n, "z: (B, m, N), rows of N"
    a = None if a is None else a.contiguous()
    return q.contiguous(), coef.contiguous(), a, z.shape[1], z.stride(0)


class DecoderKernels:
    """The decoder's fused kernels, on CPU tensors: float32, and bfloat16 for the tail's
    products. Each returns or fills float32 tensors and raises :class:`MemoryError` if the
    kernel could not allocate its buffers."""

    #: Image tokens per task of the tail: intermediates of ~0.5 MB, which stay in a core's
    #: L2 cache.
    TOKENS_PER_TASK = 128
    #: Image tokens per task of the cross-attention and LayerNorm-statistics kernels.
    ATTENTION_CHUNK = 512

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i, f, n = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_long
        self._tail = lib.mobilesam_upscale_tail
        self._tail.argtypes = [p, p, n, p, p, p, p, p, f, p, p, p, p] + [i] * 10
        lib.mobilesam_has_bf16_gemm.restype = i
        #: whether the tail can take bfloat16 products (MKL's bf16 GEMM is linked)
        self.bf16_products = bool(lib.mobilesam_has_bf16_gemm())
        self._attention = lib.mobilesam_token_attention_f32
        self._attention.argtypes = [p, p, p, p, p, n, p, p, p, p] + [i] * 8
        self._image_attention = lib.mobilesam_image_attention_f32
        self._image_attention.argtypes = [p, p, p, p, p, n, p, p, n] + [i] * 9
        self._stats = lib.mobilesam_layer_norm_stats_f32
        self._stats.argtypes = [p, n, p, p, i, p, p, p, f, f, p, p] + [i] * 5
        for fn in (self._tail, self._attention, self._image_attention, self._stats):
            fn.restype = i

    @functools.cached_property
    def bf16(self) -> bool:
        """Whether a bf16 tail should take bf16 products here: MKL's bf16 product is linked
        and, timed once on one 64×64 tail (~20 ms in all), faster than float32 on this CPU
        (MKL may emulate bf16 where the CPU lacks the instructions)."""
        return self.bf16_products and self._tail_seconds(torch.bfloat16) < self._tail_seconds(
            torch.float32
        )

    def _tail_seconds(self, dtype: torch.dtype, side: int = 64, rank: int = 100) -> float:
        """Best of 3 timings of :meth:`upscale_tail` on a ``side²`` grid, one prompt."""
        gen = torch.Generator().manual_seed(0)
        n, g, o = side * side, 64, 32

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen)

        norm = SimpleNamespace(weight=rand(g), bias=rand(g), eps=1e-6)
        args = (rand(n, 4 * g).to(dtype), rand(1, n).abs(), rand(1, rank, n))
        args += (rand(1, rank, 4 * g), rand(4 * g), norm, rand(g, 4 * o), rand(4 * o))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            self.upscale_tail(*args, rand(1, 3, o), (side, side))
            best = min(best, time.perf_counter() - start)
        return best

    @staticmethod
    def _check(failed: int, what: str) -> None:
        if failed:
            raise MemoryError(f"the native {what} could not allocate its buffers")

    def upscale_tail(
        self,
        shared: torch.Tensor,
        a: torch.Tensor | None,
        z: torch.Tensor | None,
        ew: torch.Tensor | None,
        bias1: torch.Tensor,
        norm: torch.nn.Module,
        w2: torch.Tensor,
        b2: torch.Tensor,
        hyper: torch.Tensor,
        size: tuple[int, int],
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The upscaling tail: float32 mask logits ``(B, T, 4h, 4w)`` (written into ``out``
        if given: contiguous, that shape).

        Its two products take the dtype of ``shared``: float32, or bfloat16 (where
        :attr:`bf16`) with float32 sums; LayerNorm, GELUs and the hypernetwork product run
        in float32 either way (with bfloat16 products, the GELUs' erf is a rational
        approximation whose error is far below their rounding).

        Args:
            shared: ``(N, 4·G)`` the image's first-convolution product (``N = h·w`` tokens,
                ``G = C/4`` channels per sub-pixel, sub-pixel-major).
            a: ``(B, N)`` per-token scale; z: ``(B, m, N)`` coefficients (rows of ``N``
                contiguous values); ew: ``(B, m, 4·G)`` rows through the first convolution;
                all three None for a transformer of depth 0.
            bias1: ``(4·G,)`` first convolution's bias; norm: its LayerNorm2d (``weight``,
                ``bias`` ``(G,)``, ``eps``).
            w2: ``(G, 4·O)`` and b2 ``(4·O,)``: the second convolution as a matrix.
            hyper: ``(B, T, O)`` hypernetwork outputs.
            size: ``(h, w)`` of the embedding grid.
            out: ``(B, T, 4h, 4w)`` float32, contiguous, for the logits.
        """
        h, w = size
        b, t, o = hyper.shape
        m = 0 if z is None else z.shape[1]
        low = shared.dtype == torch.bfloat16
        if low and not self.bf16_products:
            raise ValueError("bfloat16 products need MKL's bf16 GEMM, which is not linked")
        if z is not None:
            assert z.stride(-1) == 1 and z.stride(-2) == h * w, "z: (B, m, N), rows of N"
            a, ew = a.float().contiguous(), ew.to(shared.dtype).contiguous()
        f32 = [x.float().contiguous() for x in (hyper, bias1, b2, norm.weight, norm.bias)]
        hyper, bias1, b2, ln_w, ln_b = f32
        shared, w2 = shared.contiguous(), w2.to(shared.dtype).contiguous()
        if out is None:
            out = hyper.new_empty(b, t, 4 * h, 4 * w)
        elif out.shape != (b, t, 4 * h, 4 * w) or out.dtype != torch.float32:
            raise ValueError(
                f"out must be float32 {(b, t, 4 * h, 4 * w)}, got {out.dtype} {tuple(out.shape)}"
            )
        elif not out.is_contiguous():
            raise ValueError("out must be contiguous")
        failed = self._tail(
            shared.data_ptr(), _ptr(z), 0 if z is None else z.stride(0), _ptr(ew), _ptr(a),
            bias1.data_ptr(), ln_w.data_ptr(), ln_b.data_ptr(), norm.eps,
            w2.data_ptr(), b2.data_ptr(), hyper.data_ptr(), out.data_ptr(),
            b, h, w, m, ln_w.shape[0], o, t,
            max(1, self.TOKENS_PER_TASK // w), int(low), torch.get_num_threads(),
        )  # fmt: skip
        self._check(failed, "upscaling tail")
        return out

    def token_attention(
        self,
        q: torch.Tensor,
        k_img: torch.Tensor,
        k_pe: torch.Tensor | None,
        coef: torch.Tensor | None,
        z: torch.Tensor | None,
        a: torch.Tensor | None,
        v_img: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token→image attention over factored image tokens.

        Args:
            q: ``(B, H, T, d)`` scaled queries.
            k_img, k_pe: ``(H, d, N)`` the keys' image and positional parts (``k_pe`` None
                when summed into ``k_img``); coef ``(B, H·T, m)``, z ``(B, m, N)`` (rows of
                ``N`` contiguous values) and a ``(B, N)`` the factored part, None before the
                first update.
            v_img: ``(H, N, d)`` the values' image part.

        Returns:
            ``(B, H, T, d)`` the softmax weights (times ``a``) pooled over ``v_img``, and
            ``(B, H·T, m)`` pooled over ``z`` (None without ``z``).
        """
        b, heads, t, d = q.shape
        n = k_img.shape[-1]
        q, coef, a, m, z_stride = _factored_part(q, coef, z, a, n)
        out_v = q.new_empty(b, heads, t, d)
        out_z = None if z is None else q.new_empty(b, heads * t, m)
        failed = self._attention(
            q.data_ptr(), k_img.data_ptr(), _ptr(k_pe), _ptr(coef), _ptr(z), z_stride, _ptr(a),
            v_img.data_ptr(), out_v.data_ptr(), _ptr(out_z), b, heads, t, d, n, m,
            self.ATTENTION_CHUNK, torch.get_num_threads(),
        )  # fmt: skip
        self._check(failed, "token attention")
        return out_v, out_z

    def image_attention(
        self,
        q: torch.Tensor,
        q_img: torch.Tensor,
        q_pe: torch.Tensor | None,
        coef: torch.Tensor | None,
        z: torch.Tensor | None,
        a: torch.Tensor | None,
        out: torch.Tensor,
        skip_first: bool = False,
    ) -> None:
        """Image→token attention weights over factored image tokens, written into ``out``.

        Args:
            q: ``(B, H, T, d)`` the tokens' scaled keys.
            q_img, q_pe: ``(H, d, N)`` the image side's queries, image and positional parts
                (``q_pe`` None when summed into ``q_img``); coef ``(B, H·T, m)``, z
                ``(B, m, N)`` and a ``(B, N)`` as in :meth:`token_attention`.
            out: ``(B, H·T, N)``, rows of ``N`` contiguous values: the softmax over the
                ``T`` tokens of each head, divided by ``a`` when given; with ``skip_first``
                ``(B, H·(T−1), N)``, without each head's first token.
        """
        b, heads, t, d = q.shape
        n = q_img.shape[-1]
        q, coef, a, m, z_stride = _factored_part(q, coef, z, a, n)
        assert out.stride(-1) == 1 and out.stride(-2) == n, "out: rows of N contiguous values"
        failed = self._image_attention(
            q.data_ptr(), q_img.data_ptr(), _ptr(q_pe), _ptr(coef), _ptr(z), z_stride, _ptr(a),
            out.data_ptr(), out.stride(0), b, heads, t, d, n, m, int(skip_first),
            self.ATTENTION_CHUNK, torch.get_num_threads(),
        )  # fmt: skip
        self._check(failed, "image attention")

    def layer_norm_stats(
        self,
        z: torch.Tensor,
        lhs: torch.Tensor,
        segments: list[tuple[tuple, torch.Tensor]],
        x_sum: torch.Tensor,
        x_sq: torch.Tensor,
        a: torch.Tensor | None,
        channels: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LayerNorm statistics of factored image tokens ``a ⊙ (X·diag(g) + zᵀ·e)``.

        Args:
            z: ``(B, m, N)`` coefficients (rows of ``N`` contiguous values).
            lhs: ``(B, m + 1, m)``: ``ẽ·ẽᵀ`` of the centred rows, then the rows' sums.
            segments: ``(run, cross)`` per run of rows, ``run`` with ``start``, ``stop``,
                ``values`` and ``summed`` as in ``decoder_cache._Run``: fixed rows
                (``values`` None, ``cross`` ``(stop - start, N)`` cached ``ẽ·x̃`` products)
                or an update's rows (``values`` ``(B, H, T', d)``, ``cross``
                ``(H, d, N)``), one per head and token or, ``summed``, per token.
            x_sum, x_sq: ``(N,)`` cached sums and centred squared norms of the image part.
            a: ``(B, N)`` per-token scale, or None (1).
            channels: ``C``, the tokens' width; eps: the LayerNorm's.

        Returns:
            ``(B, N)`` means of ``X·diag(g) + zᵀ·e`` and the inverse standard deviations
            ``1 / sqrt(a² var + eps)``.
        """
        b, m, n = z.shape
        assert z.stride(-1) == 1 and z.stride(-2) == n, "z: (B, m, N), rows of N"
        keep = []  # the contiguous tensors the kernel reads, alive until it returns
        table = (_Segment * len(segments))()
        for i, (run, cross) in enumerate(segments):
            cross = cross.contiguous()
            values = None if run.values is None else run.values.contiguous()
            keep += [cross, values]
            heads, d = (1, 0) if values is None else (values.shape[1], values.shape[-1])
            table[i] = _Segment(
                run.start, run.stop, heads, d, int(run.summed), _ptr(values), cross.data_ptr()
            )
        lhs, a = lhs.contiguous(), None if a is None else a.contiguous()
        mean, inv_std = z.new_empty(b, n), z.new_empty(b, n)
        failed = self._stats(
            z.data_ptr(), z.stride(0), lhs.data_ptr(), table, len(segments), x_sum.data_ptr(),
            x_sq.data_ptr(), _ptr(a), float(channels), eps, mean.data_ptr(),
            inv_std.data_ptr(), b, n, m, self.ATTENTION_CHUNK, torch.get_num_threads(),
        )  # fmt: skip
        self._check(failed, "LayerNorm statistics")
        return mean, inv_std
