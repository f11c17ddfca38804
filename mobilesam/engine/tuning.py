"""Every tuning constant of the inference engine, in one place.

Each is a size chosen for speed (or, for :data:`MARGIN_EPS`, a safety margin); none changes a
result beyond float rounding. How they were measured: ``docs/speed.md``.
"""

from __future__ import annotations

#: Output pixels per block side of the block-wise mask upsampling (:mod:`mobilesam.postprocess`).
BLOCK = 32

#: Margin, in dtype epsilons times a block's largest low-res magnitude, by which a block must
#: clear a threshold to be decided without upsampling (a 64× safety factor over rounding).
MARGIN_EPS = 1024

#: Image tokens per chunk of the PyTorch upscaling tail on CPU (bounds its intermediates).
UPSCALE_CHUNK_TOKENS = 4096

#: Prompts per decoder pass of segment everything on CPU (~2 MB of factored tokens each).
CPU_DECODER_BATCH = 48

#: Tokens per band of the encoder's banded inference (keeps a band's activations in cache).
BAND_TOKENS = 8192

#: Tokens per band of the encoder's window attention (its score maps grow with the window).
ATTN_BAND_TOKENS = 2048

#: Image tokens per task of the native upscaling tail (~0.5 MB of intermediates, in L2).
TOKENS_PER_TASK = 128

#: Image tokens per task of the native cross-attention and LayerNorm-statistics kernels.
ATTENTION_CHUNK = 512

#: Most rows (prompts × tokens) a token-side linear layer sends to the native kernel, which
#: reads each weight once per 8 rows; above it PyTorch's GEMM is faster.
TOKEN_LINEAR_MAX_ROWS = 32
