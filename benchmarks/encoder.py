"""CPU benchmark of the MobileSAM encoder and of ``predict``.

Reports, with the thread count stated:
- the machine's fp32 matmul peak (best of 10 runs of a 2048² matmul) and its median;
- the encoder's FLOPs (``torch.utils.flop_counter``);
- median encoder forward, ``set_image`` (preprocessing + encoder) and one-point ``predict``;
- the same for an *official-order* reference: this package's modules run with the official
  code's arithmetic (BatchNorm unfused, explicit softmax attention, NCHW-contiguous encoder
  convolutions, ConvTranspose2d upscaling on strided token views), so the speed-up is
  measured in one run under the same machine noise;
- achieved GFLOP/s and the percentage of the matmul peak.

Usage: ``python benchmarks/encoder.py [--threads 2] [--repeats 7] [--json PATH]``
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    machine_info,
    matmul_peak,
    print_table,
    summary,
    time_fn,
    write_json,
)

from mobilesam import SamPredictor, build_sam  # noqa: E402
from mobilesam.modeling import mask_decoder, tiny_vit, transformer  # noqa: E402


@contextlib.contextmanager
def official_order(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily run the model with the official implementation's arithmetic."""

    def upscale(self, keys, h, w):  # type: ignore[no-untyped-def]
        # Official: NCHW view of the tokens through the ConvTranspose2d Sequential.
        x = self.output_upscaling(keys.transpose(1, 2).view(keys.shape[0], -1, h, w))
        return x.permute(0, 2, 3, 1)

    def dec_attn(self, q, k, v):  # type: ignore[no-untyped-def]
        q, k, v = (
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        )
        attn = torch.softmax((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5, dim=-1)
        out = attn @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def two_way(self, image_embedding, image_pe, point_embedding):  # type: ignore[no-untyped-def]
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        return self.norm_final_attn(queries + attn), keys

    def attn_forward(self: tiny_vit.Attention, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3)
        )
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = ((q @ k.transpose(-2, -1)) * self.key_dim**-0.5 + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))

    def postprocess(self, masks, input_size, original_size):  # type: ignore[no-untyped-def]
        s = self.img_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    patches = [
        (tiny_vit.Conv2d_BN, "forward", lambda self, x: self.bn(self.c(x))),
        (tiny_vit.Attention, "forward", attn_forward),
        (tiny_vit, "_nchw", lambda x: x.permute(0, 3, 1, 2).contiguous()),
        (tiny_vit.PatchEmbed, "forward", lambda self, x: self.seq(x).permute(0, 2, 3, 1)),
        (type(model), "postprocess_masks", postprocess),
        (mask_decoder.MaskDecoder, "upscale", upscale),
        (transformer.Attention, "forward", dec_attn),
        (transformer.TwoWayTransformer, "forward", two_way),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, new in patches:
        setattr(obj, name, new)
    try:
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def encoder_flops(model: torch.nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, model.img_size, model.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.image_encoder(x)
    return int(counter.get_total_flops())


def measure(model, image: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    pred = SamPredictor(model)
    x = torch.randn(1, 3, model.img_size, model.img_size)
    with torch.no_grad():
        enc = time_fn(lambda: model.image_encoder(x), repeats, warmup=1)
    set_img = time_fn(lambda: pred.set_image(image), repeats, warmup=1)
    h, w = image.shape[:2]
    pt, lb = np.array([[w * 0.55, h * 0.5]]), np.array([1])
    predict = time_fn(lambda: pred.predict(pt, lb, multimask_output=True), 5 * repeats, warmup=2)
    return {"encoder": summary(enc), "set_image": summary(set_img), "predict": summary(predict)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--image", default=str(REFERENCE / "images" / "picture1.jpg"))
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_sam(args.checkpoint)
    image = np.array(Image.open(args.image).convert("RGB"))
    flops = encoder_flops(model)
    peak_before = matmul_peak()
    ours = measure(model, image, args.repeats)
    official = None
    if not args.skip_official:
        with official_order(model):
            official = measure(model, image, args.repeats)
    peak_after = matmul_peak()
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])

    def gflops(s: float) -> float:
        return flops / s / 1e9

    rows = []
    for name, res in [("mobilesam", ours), ("official-order", official)]:
        if res is None:
            continue
        enc = res["encoder"]["median_s"]
        rows.append(
            (
                name,
                f"{enc:.3f}",
                f"{res['set_image']['median_s']:.3f}",
                f"{1000 * res['predict']['median_s']:.1f}",
                f"{gflops(enc):.1f}",
                f"{100 * gflops(enc) / peak:.1f}%",
            )
        )
    print(
        f"threads={args.threads}  encoder={flops / 1e9:.1f} GFLOP  "
        f"matmul 2048² best-of-10 peak={peak:.1f} GFLOP/s "
        f"(medians {peak_before['median_gflops']:.1f}, {peak_after['median_gflops']:.1f})"
    )
    print_table(
        rows,
        ("impl", "encoder s", "set_image s", "predict ms", "GFLOP/s", "% of peak"),
    )
    result = {
        "machine": machine_info(),
        "threads": args.threads,
        "image": Path(args.image).name,
        "encoder_gflop": flops / 1e9,
        "matmul_peak_gflops": peak,
        "matmul": [peak_before, peak_after],
        "mobilesam": ours,
        "official_order": official,
        "encoder_pct_of_peak": 100 * gflops(ours["encoder"]["median_s"]) / peak,
    }
    if official is not None:
        result["speedup_encoder"] = official["encoder"]["median_s"] / ours["encoder"]["median_s"]
        result["speedup_predict"] = official["predict"]["median_s"] / ours["predict"]["median_s"]
        print(
            f"speed-up vs official-order: encoder {result['speedup_encoder']:.2f}×, "
            f"predict {result['speedup_predict']:.2f}×"
        )
    print("anchors (official code, README): encoder 2.2-2.4 s; predict 87-110 ms")
    print(f"json: {write_json('encoder', result, args.json)}")


if __name__ == "__main__":
    main()
