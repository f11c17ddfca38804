"""The decoder's native kernels as Python calls (see :mod:`mobilesam.engine.native`).

Each C function is declared once, as a table of its parameters' names and ``ctypes`` types in
the C order (:class:`_Kernel`), and called by keyword. Before any pointer reaches C, every
tensor is checked against the shapes the kernel reads: CPU, dtype, size of every axis, and
memory layout (contiguous, or rows of ``N`` contiguous values where the kernel takes a row
stride). A failed check raises :class:`ValueError` with one line naming the argument; the
checks are plain ``if`` statements, so they hold under ``python -O``.

The kernels record no gradients: they are for inference, on tensors that do not require
them (see :func:`mobilesam.engine.native.applicable`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from ... import precision
from .. import tuning

_PTR, _INT, _LONG, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class _Kernel:
    """One C function of the library, called by keyword with exactly its declared parameters
    (``(name, ctypes type)`` in the C order). A nonzero return (a failed allocation) raises
    :class:`MemoryError`."""

    def __init__(self, lib: ctypes.CDLL, symbol: str, what: str, params: Sequence[tuple]):
        self._fn = getattr(lib, symbol)
        self._fn.argtypes = [ctype for _, ctype in params]
        self._fn.restype = ctypes.c_int
        self._names = tuple(name for name, _ in params)
        self._ints = [i for i, (_, ctype) in enumerate(params) if ctype is _INT]
        self._what = what

    def __call__(self, **args: object) -> None:
        try:
            values = [args[name] for name in self._names]
        except KeyError:
            values = None
        if values is None or len(args) != len(values):
            missing = sorted(set(self._names) - args.keys())
            extra = sorted(args.keys() - set(self._names))
            raise TypeError(f"native {self._what}: missing {missing}, unexpected {extra}")
        ints = [values[i] for i in self._ints]
        if min(ints) < _INT_MIN or max(ints) > _INT_MAX:  # ctypes would wrap them silently
            i = next(i for i in self._ints if not _INT_MIN <= values[i] <= _INT_MAX)
            raise ValueError(f"native {self._what}: {self._names[i]}={values[i]} exceeds a C int")
        if self._fn(*values):
            raise MemoryError(f"the native {self._what} could not allocate its buffers")


# The C signatures, parameter by parameter (names as in the .c files).
_UPSCALE_TAIL = (
    ("shared", _PTR), ("z", _PTR), ("z_batch_stride", _LONG), ("ewt", _PTR), ("a", _PTR),
    ("bias1", _PTR), ("lnw", _PTR), ("lnb", _PTR), ("eps", _FLOAT), ("w2t", _PTR),
    ("b2", _PTR), ("hyper", _PTR), ("out", _PTR), ("batch", _INT), ("h", _INT), ("w", _INT),
    ("m", _INT), ("G", _INT), ("O", _INT), ("T", _INT), ("rows_per_chunk", _INT),
    ("bf16", _INT), ("threads", _INT),
)  # fmt: skip
_TOKEN_ATTENTION = (
    ("q", _PTR), ("k_img", _PTR), ("k_pe", _PTR), ("coef", _PTR), ("z", _PTR),
    ("z_batch_stride", _LONG), ("a", _PTR), ("v_img", _PTR), ("out_v", _PTR), ("out_z", _PTR),
    ("batch", _INT), ("H", _INT), ("T", _INT), ("d", _INT), ("N", _INT), ("m", _INT),
    ("chunk", _INT), ("threads", _INT),
)  # fmt: skip
_IMAGE_ATTENTION = (
    ("q", _PTR), ("k_img", _PTR), ("k_pe", _PTR), ("coef", _PTR), ("z", _PTR),
    ("z_batch_stride", _LONG), ("a", _PTR), ("out", _PTR), ("out_batch_stride", _LONG),
    ("batch", _INT), ("H", _INT), ("T", _INT), ("d", _INT), ("N", _INT), ("m", _INT),
    ("first", _INT), ("chunk", _INT), ("threads", _INT),
)  # fmt: skip


_TOKEN_LINEAR = (
    ("x", _PTR), ("wp", _PTR), ("bias", _PTR), ("y", _PTR), ("M", _INT), ("K", _INT),
    ("N", _INT), ("relu", _INT), ("threads", _INT),
)  # fmt: skip


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


_LAYER_NORM_STATS = (
    ("z", _PTR), ("z_batch_stride", _LONG), ("lhs", _PTR), ("segments", ctypes.POINTER(_Segment)),
    ("n_segments", _INT), ("x_sum", _PTR), ("x_sq", _PTR), ("a", _PTR), ("channels", _FLOAT),
    ("eps", _FLOAT), ("mean", _PTR), ("r", _PTR), ("batch", _INT), ("N", _INT), ("m", _INT),
    ("chunk", _INT), ("threads", _INT),
)  # fmt: skip


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _checked(
    name: str,
    t: torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    layout: str = "contiguous",
) -> torch.Tensor:
    """``t`` once it is on the CPU, of ``dtype`` and ``shape``, laid out as the kernel reads
    it: ``"copy"`` (made contiguous here if it is not), ``"contiguous"`` (required) or
    ``"rows"`` (the last axis contiguous, the one before it a stride of ``shape[-1]``; the
    first axis any stride). Raises ValueError naming ``name`` otherwise."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if layout == "copy":
        return t.contiguous()
    if layout == "rows":
        stride = t.stride()
        if t.numel() and (stride[-1] != 1 or (shape[-2] > 1 and stride[-2] != shape[-1])):
            raise ValueError(f"{name} must have rows of {shape[-1]} contiguous values")
    elif not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return t


def _transposed_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, K, R)`` → ``(B, R, K')`` contiguous in ``dtype``: each output row's ``K`` terms
    in a row, with ``K' = K`` in float32 and ``K`` rounded up to even (a zero term) in
    bfloat16, whose products take pairs of terms."""
    xt = x.transpose(1, 2).to(dtype)
    if dtype == torch.bfloat16 and x.shape[1] % 2:
        xt = torch.nn.functional.pad(xt, (0, 1))
    return xt.contiguous()


def _dims(name: str, t: torch.Tensor, ndim: int) -> tuple[int, ...]:
    """The shape of ``t``, which must be a tensor of ``ndim`` axes."""
    if not isinstance(t, torch.Tensor) or t.dim() != ndim:
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor of {ndim} axes, got {got}")
    return tuple(t.shape)


def _factored(
    b: int,
    rows: int,
    n: int,
    coef: torch.Tensor | None,
    z: torch.Tensor | None,
    a: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
    """The factored part of ``b`` prompts' image tokens, checked: ``z`` ``(b, m, n)`` (rows of
    ``n``), ``coef`` ``(b, rows, m)`` (both or neither), ``a`` ``(b, n)`` or None; and ``m``
    (0 without ``z``)."""
    if (coef is None) != (z is None):
        raise ValueError("coef and z must be given together")
    m = 0
    if z is not None:
        m = _dims("z", z, 3)[1]
        z = _checked("z", z, (b, m, n), layout="rows")
        coef = _checked("coef", coef, (b, rows, m), layout="copy")
    if a is not None:
        a = _checked("a", a, (b, n), layout="copy")
    return coef, z, a, m


def bf16_tail_products(features: precision.CpuFeatures, kernel_built: bool) -> tuple[bool, str]:
    """Whether a bf16 upscaling tail takes bf16 products (else its products stay float32),
    and why, in a few words: yes where the CPU has AVX512-BF16's dot-product instruction
    (``avx512_bf16``) and the kernel using it was built."""
    if not kernel_built:
        return False, "the AVX512-BF16 kernel is not built (compiler)"
    if "avx512_bf16" not in features.flags:
        return False, "the CPU has no AVX512-BF16 (avx512_bf16)"
    return True, "AVX512-BF16 dot products"


class DecoderKernels:
    """The decoder's fused kernels, on CPU tensors: float32, and bfloat16 for the tail's
    products where the CPU has AVX512-BF16 (:attr:`bf16`). Each returns or fills float32 tensors; raises
    :class:`ValueError` for a tensor the kernel cannot read (see the module docstring) and
    :class:`MemoryError` if the kernel could not allocate its buffers."""

    #: Task sizes in image tokens (see :mod:`mobilesam.engine.tuning`).
    TOKENS_PER_TASK = tuning.TOKENS_PER_TASK
    ATTENTION_CHUNK = tuning.ATTENTION_CHUNK

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._tail = _Kernel(lib, "mobilesam_upscale_tail", "upscaling tail", _UPSCALE_TAIL)
        self._attention = _Kernel(
            lib, "mobilesam_token_attention_f32", "token attention", _TOKEN_ATTENTION
        )
        self._image_attention = _Kernel(
            lib, "mobilesam_image_attention_f32", "image attention", _IMAGE_ATTENTION
        )
        self._stats = _Kernel(
            lib, "mobilesam_layer_norm_stats_f32", "LayerNorm statistics", _LAYER_NORM_STATS
        )
        self._linear = _Kernel(lib, "mobilesam_token_linear_f32", "token linear", _TOKEN_LINEAR)
        cols = lib.mobilesam_token_linear_cols
        cols.argtypes, cols.restype = [], ctypes.c_int
        #: the output-column block of :meth:`token_linear` (0 where it is not offered)
        self.linear_cols = int(cols())
        has_bf16 = lib.mobilesam_has_bf16_kernel
        has_bf16.argtypes, has_bf16.restype = [], ctypes.c_int
        #: whether the tail's AVX512-BF16 kernel is built (the CPU may still lack it)
        self.bf16_products = bool(has_bf16())

    @property
    def bf16(self) -> bool:
        """Whether a bf16 tail takes bf16 products here: decided from the CPU's features
        (:func:`bf16_tail_products`), never from a timing."""
        return bf16_tail_products(precision.cpu_features(), self.bf16_products)[0]

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
        :attr:`bf16_products`) with float32 sums; LayerNorm, GELUs and the hypernetwork
        product run in float32 either way (with bfloat16 products, the GELUs' erf is a
        rational approximation whose error is far below their rounding).

        Args:
            shared: ``(4·G, N)`` the image's first-convolution product, channels first
                (``N = h·w`` tokens, ``G = C/4`` channels per sub-pixel, sub-pixel-major),
                float32 or bfloat16, contiguous.
            a: ``(B, N)`` per-token scale; z: ``(B, m, N)`` coefficients (rows of ``N``
                contiguous values); ew: ``(B, m, 4·G)`` rows through the first convolution
                (cast to the dtype of ``shared``); all three None for a transformer of
                depth 0. Float32.
            bias1: ``(4·G,)`` first convolution's bias; norm: its LayerNorm2d (``weight``,
                ``bias`` ``(G,)``, ``eps``).
            w2: ``(G, 4·O)`` (cast to the dtype of ``shared``) and b2 ``(4·O,)``: the second
                convolution as a matrix.
            hyper: ``(B, T, O)`` hypernetwork outputs.
            size: ``(h, w)`` of the embedding grid.
            out: ``(B, T, 4h, 4w)`` float32, contiguous, for the logits.
        """
        h, w = (int(s) for s in size)
        n = h * w
        b, t, o = _dims("hyper", hyper, 3)
        g = _dims("norm.weight", norm.weight, 1)[0]
        dtype = shared.dtype if isinstance(shared, torch.Tensor) else None
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"shared must be torch.float32 or torch.bfloat16, got {dtype}")
        low = dtype == torch.bfloat16
        if low and not self.bf16:
            why = bf16_tail_products(precision.cpu_features(), self.bf16_products)[1]
            raise ValueError(f"bfloat16 products are not available here: {why}")
        shared = _checked("shared", shared, (4 * g, n), dtype)
        if (z is None) != (ew is None) or (z is None and a is not None):
            raise ValueError("a, z and ew must be given together (a may be None with z)")
        m = 0
        ewt = None
        if z is not None:
            m = _dims("z", z, 3)[1]
            z = _checked("z", z, (b, m, n), layout="rows")
            ew = _checked("ew", ew, (b, m, 4 * g), layout="copy")
            ewt = _transposed_rows(ew, dtype)  # (B, 4·G, m), m padded to even in bf16
            if a is not None:
                a = _checked("a", a, (b, n), layout="copy")
        bias1 = _checked("bias1", bias1, (4 * g,), layout="copy")
        ln_w = _checked("norm.weight", norm.weight, (g,), layout="copy")
        ln_b = _checked("norm.bias", norm.bias, (g,), layout="copy")
        w2_dtype = getattr(w2, "dtype", None)  # float32, or already the products' dtype
        w2_dtype = w2_dtype if w2_dtype in (torch.float32, dtype) else dtype
        w2 = _checked("w2", w2, (g, 4 * o), w2_dtype, layout="copy")
        w2t = _transposed_rows(w2[None], dtype)[0]  # (4·O, G), G padded to even in bf16
        b2 = _checked("b2", b2, (4 * o,), layout="copy")
        hyper = _checked("hyper", hyper, (b, t, o), layout="copy")
        if out is None:
            out = hyper.new_empty(b, t, 4 * h, 4 * w)
        else:
            if not isinstance(out, torch.Tensor) or out.shape != (b, t, 4 * h, 4 * w):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"out must be float32 {(b, t, 4 * h, 4 * w)}, got {got}")
            out = _checked("out", out, (b, t, 4 * h, 4 * w))
        self._tail(
            shared=shared.data_ptr(), z=_ptr(z), z_batch_stride=0 if z is None else z.stride(0),
            ewt=_ptr(ewt), a=_ptr(a), bias1=bias1.data_ptr(), lnw=ln_w.data_ptr(),
            lnb=ln_b.data_ptr(), eps=float(norm.eps), w2t=w2t.data_ptr(), b2=b2.data_ptr(),
            hyper=hyper.data_ptr(), out=out.data_ptr(), batch=b, h=h, w=w, m=m, G=g, O=o, T=t,
            rows_per_chunk=max(1, self.TOKENS_PER_TASK // max(w, 1)), bf16=int(low),
            threads=torch.get_num_threads(),
        )  # fmt: skip
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
        """Token→image attention over factored image tokens (float32).

        Args:
            q: ``(B, H, T, d)`` scaled queries.
            k_img, k_pe: ``(H, d, N)`` the keys' image and positional parts, contiguous
                (``k_pe`` None when summed into ``k_img``); coef ``(B, H·T, m)``, z
                ``(B, m, N)`` (rows of ``N`` contiguous values) and a ``(B, N)`` the factored
                part, None before the first update (``a`` may come alone).
            v_img: ``(H, N, d)`` the values' image part, contiguous.

        Returns:
            ``(B, H, T, d)`` the softmax weights (times ``a``) pooled over ``v_img``, and
            ``(B, H·T, m)`` pooled over ``z`` (None without ``z``).
        """
        b, heads, t, d = _dims("q", q, 4)
        n = _dims("k_img", k_img, 3)[-1]
        q = _checked("q", q, (b, heads, t, d), layout="copy")
        k_img = _checked("k_img", k_img, (heads, d, n))
        if k_pe is not None:
            k_pe = _checked("k_pe", k_pe, (heads, d, n))
        v_img = _checked("v_img", v_img, (heads, n, d))
        coef, z, a, m = _factored(b, heads * t, n, coef, z, a)
        out_v = q.new_empty(b, heads, t, d)
        out_z = None if z is None else q.new_empty(b, heads * t, m)
        self._attention(
            q=q.data_ptr(), k_img=k_img.data_ptr(), k_pe=_ptr(k_pe), coef=_ptr(coef), z=_ptr(z),
            z_batch_stride=0 if z is None else z.stride(0), a=_ptr(a), v_img=v_img.data_ptr(),
            out_v=out_v.data_ptr(), out_z=_ptr(out_z), batch=b, H=heads, T=t, d=d, N=n, m=m,
            chunk=self.ATTENTION_CHUNK, threads=torch.get_num_threads(),
        )  # fmt: skip
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
        """Image→token attention weights over factored image tokens (float32), written into
        ``out``.

        Args:
            q: ``(B, H, T, d)`` the tokens' scaled keys.
            q_img, q_pe: ``(H, d, N)`` the image side's queries, image and positional parts,
                contiguous (``q_pe`` None when summed into ``q_img``); coef ``(B, H·T, m)``,
                z ``(B, m, N)`` and a ``(B, N)`` as in :meth:`token_attention`.
            out: ``(B, H·T, N)``, rows of ``N`` contiguous values: the softmax over the
                ``T`` tokens of each head, divided by ``a`` when given; with ``skip_first``
                ``(B, H·(T−1), N)``, without each head's first token.
        """
        b, heads, t, d = _dims("q", q, 4)
        n = _dims("q_img", q_img, 3)[-1]
        q = _checked("q", q, (b, heads, t, d), layout="copy")
        q_img = _checked("q_img", q_img, (heads, d, n))
        if q_pe is not None:
            q_pe = _checked("q_pe", q_pe, (heads, d, n))
        coef, z, a, m = _factored(b, heads * t, n, coef, z, a)
        first = int(bool(skip_first))
        out = _checked("out", out, (b, heads * (t - first), n), layout="rows")
        self._image_attention(
            q=q.data_ptr(), k_img=q_img.data_ptr(), k_pe=_ptr(q_pe), coef=_ptr(coef), z=_ptr(z),
            z_batch_stride=0 if z is None else z.stride(0), a=_ptr(a), out=out.data_ptr(),
            out_batch_stride=out.stride(0), batch=b, H=heads, T=t, d=d, N=n, m=m, first=first,
            chunk=self.ATTENTION_CHUNK, threads=torch.get_num_threads(),
        )  # fmt: skip

    def layer_norm_stats(
        self,
        z: torch.Tensor,
        lhs: torch.Tensor,
        segments: list[tuple[object, torch.Tensor]],
        x_sum: torch.Tensor,
        x_sq: torch.Tensor,
        a: torch.Tensor | None,
        channels: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LayerNorm statistics of factored image tokens ``a ⊙ (X·diag(g) + zᵀ·e)`` (float32).

        Args:
            z: ``(B, m, N)`` coefficients (rows of ``N`` contiguous values).
            lhs: ``(B, m + 1, m)``: ``ẽ·ẽᵀ`` of the centred rows, then the rows' sums.
            segments: ``(run, cross)`` per run of rows, ``run`` with ``start``, ``stop``
                (``0 ≤ start ≤ stop ≤ m``), ``values`` and ``summed`` as in the decoder's
                runs of rows: fixed rows (``values`` None, ``cross`` ``(stop - start, N)``
                cached ``ẽ·x̃`` products) or an update's rows (``values`` ``(B, H, T', d)``,
                ``cross`` ``(H, d, N)``), one per head and token (``stop - start = H·T'``)
                or, ``summed``, per token (``stop - start = T'``).
            x_sum, x_sq: ``(N,)`` cached sums and centred squared norms of the image part.
            a: ``(B, N)`` per-token scale, or None (1).
            channels: ``C``, the tokens' width; eps: the LayerNorm's.

        Returns:
            ``(B, N)`` means of ``X·diag(g) + zᵀ·e`` and the inverse standard deviations
            ``1 / sqrt(a² var + eps)``.
        """
        b, m, n = _dims("z", z, 3)
        z = _checked("z", z, (b, m, n), layout="rows")
        lhs = _checked("lhs", lhs, (b, m + 1, m), layout="copy")
        x_sum = _checked("x_sum", x_sum, (n,), layout="copy")
        x_sq = _checked("x_sq", x_sq, (n,), layout="copy")
        if a is not None:
            a = _checked("a", a, (b, n), layout="copy")
        keep = []  # the contiguous tensors the kernel reads, alive until it returns
        table = (_Segment * len(segments))()
        for i, (run, cross) in enumerate(segments):
            start, stop, summed = int(run.start), int(run.stop), bool(run.summed)
            if not 0 <= start <= stop <= m:
                raise ValueError(f"segment {i}: rows {start}..{stop} outside 0..{m}")
            rows = stop - start
            if run.values is None:
                heads, d, values = 1, 0, None
                cross = _checked(f"segment {i} cross", cross, (rows, n), layout="copy")
            else:
                _, heads, t, d = _dims(f"segment {i} values", run.values, 4)
                if rows != (t if summed else heads * t):
                    raise ValueError(
                        f"segment {i}: {rows} rows, but values {tuple(run.values.shape)}"
                        f" give {t if summed else heads * t}"
                    )
                values = _checked(
                    f"segment {i} values", run.values, (b, heads, t, d), layout="copy"
                )
                cross = _checked(f"segment {i} cross", cross, (heads, d, n), layout="copy")
            keep += [cross, values]
            table[i] = _Segment(start, stop, heads, d, int(summed), _ptr(values), _ptr(cross))
        mean, inv_std = z.new_empty(b, n), z.new_empty(b, n)
        self._stats(
            z=z.data_ptr(), z_batch_stride=z.stride(0), lhs=lhs.data_ptr(), segments=table,
            n_segments=len(segments), x_sum=x_sum.data_ptr(), x_sq=x_sq.data_ptr(), a=_ptr(a),
            channels=float(channels), eps=float(eps), mean=mean.data_ptr(),
            r=inv_std.data_ptr(), batch=b, N=n, m=m, chunk=self.ATTENTION_CHUNK,
            threads=torch.get_num_threads(),
        )  # fmt: skip
        return mean, inv_std

    def pack_linear(self, weight: torch.Tensor) -> torch.Tensor | None:
        """A linear layer's ``weight`` ``(N, K)`` (float32) in the layout
        :meth:`token_linear` reads: ``(N / cols, K, cols)``, each block of
        :attr:`linear_cols` outputs' weights transposed; None where the kernel is not offered
        or ``N`` is not a multiple of the block."""
        n, k = _dims("weight", weight, 2)
        cols = self.linear_cols
        if not cols or n % cols or weight.dtype != torch.float32 or not weight.is_cpu:
            return None
        return weight.detach().view(n // cols, cols, k).transpose(1, 2).contiguous()

    def token_linear(
        self,
        x: torch.Tensor,
        packed: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool = False,
    ) -> torch.Tensor:
        """``x @ Wᵀ + bias`` (then ReLU with ``relu``) for a few rows (float32): ``x``
        ``(..., K)``, ``packed`` the weight from :meth:`pack_linear`, ``bias`` ``(N,)`` or
        None. Returns ``(..., N)``."""
        blocks, k, cols = _dims("packed", packed, 3)
        n = blocks * cols
        if cols != self.linear_cols:
            raise ValueError(f"packed must have blocks of {self.linear_cols} columns, got {cols}")
        lead = tuple(x.shape[:-1]) if isinstance(x, torch.Tensor) else ()
        rows = 1
        for size in lead:
            rows *= size
        x = _checked("x", x, (*lead, k), layout="copy")
        packed = _checked("packed", packed, (blocks, k, cols))
        if bias is not None:
            bias = _checked("bias", bias, (n,), layout="copy")
        y = x.new_empty(*lead, n)
        # one thread below ~2 M multiply-adds: the fork costs more than it saves
        threads = max(1, min(torch.get_num_threads(), rows * k * n // 2_000_000))
        self._linear(
            x=x.data_ptr(), wp=packed.data_ptr(), bias=_ptr(bias), y=y.data_ptr(), M=rows, K=k,
            N=n, relu=int(bool(relu)), threads=threads,
        )  # fmt: skip
        return y
