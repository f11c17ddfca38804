"""Reference implementations for the benchmarks: the official code's arithmetic and the
official segment-everything algorithm, run on this package's modules so that speed-ups are
measured against them in the same run, under the same machine noise.

Nothing here is used by the library or the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mobilesam.automatic_mask_generator import SamAutomaticMaskGenerator, _Candidates
from mobilesam.masks import calculate_stability_score, is_box_near_crop_edge, uncrop_masks
from mobilesam.modeling import mask_decoder, tiny_vit, transformer


@contextlib.contextmanager
def official_order(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily run the model with the official implementation's arithmetic."""

    def masks_from_tokens(self, keys, hyper_in, h, w):  # type: ignore[no-untyped-def]
        # Official: NCHW view of the tokens through the ConvTranspose2d Sequential.
        x = self.output_upscaling(keys.transpose(1, 2).view(keys.shape[0], -1, h, w))
        b, c, hh, ww = x.shape
        return (hyper_in @ x.view(b, c, hh * ww)).view(b, -1, hh, ww)

    def dec_attn(self, q, k, v, folded=False):  # type: ignore[no-untyped-def]
        q, k, v = (
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        )
        attn = torch.softmax((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5, dim=-1)
        out = attn @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def two_way(self, image_embedding, image_pe, point_embedding, folded=False):  # type: ignore[no-untyped-def]
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

    original_predict_masks = mask_decoder.MaskDecoder.predict_masks

    def predict_masks(self, image_embeddings, image_pe, sparse, dense, folded=False):  # type: ignore[no-untyped-def]
        # Official: torch.repeat_interleave of the image embedding, one copy per prompt.
        b = sparse.shape[0]
        src = torch.repeat_interleave(image_embeddings, b // image_embeddings.shape[0], dim=0)
        return original_predict_masks(self, src, image_pe, sparse, dense.contiguous(), False)

    patches = [
        (tiny_vit.Conv2d_BN, "forward", lambda self, x: self.bn(self.c(x))),
        (tiny_vit.Attention, "forward", attn_forward),
        (tiny_vit, "_nchw", lambda x: x.permute(0, 3, 1, 2).contiguous()),
        (tiny_vit.PatchEmbed, "forward", lambda self, x: self.seq(x).permute(0, 2, 3, 1)),
        (type(model), "postprocess_masks", postprocess),
        (mask_decoder.MaskDecoder, "masks_from_tokens", masks_from_tokens),
        (mask_decoder.MaskDecoder, "predict_masks", predict_masks),
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


def dense_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """The official ``batched_mask_to_box``: full-size row/column reductions per mask."""
    h, w = masks.shape[-2:]
    in_height = torch.max(masks, dim=-1).values
    in_height_coords = in_height * torch.arange(h)[None, :]
    bottom = torch.max(in_height_coords, dim=-1).values
    top = torch.min(in_height_coords + h * (~in_height), dim=-1).values
    in_width = torch.max(masks, dim=-2).values
    in_width_coords = in_width * torch.arange(w)[None, :]
    right = torch.max(in_width_coords, dim=-1).values
    left = torch.min(in_width_coords + w * (~in_width), dim=-1).values
    empty = (right < left) | (bottom < top)
    out = torch.stack([left, top, right, bottom], dim=-1)
    return out * (~empty).unsqueeze(-1)


def transposed_rle(masks: torch.Tensor) -> list[dict]:
    """The official ``mask_to_rle_pytorch``: a transposed copy of every mask, then changes."""
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    diff = flat[:, 1:] ^ flat[:, :-1]
    change = diff.nonzero()
    out = []
    for i in range(b):
        cur = change[change[:, 0] == i, 1]
        cur = torch.cat([torch.tensor([0]), cur + 1, torch.tensor([h * w])])
        btw = (cur[1:] - cur[:-1]).tolist()
        counts = [] if flat[i, 0] == 0 else [0]
        out.append({"size": [h, w], "counts": counts + btw})
    return out


class OfficialAlgorithmGenerator(SamAutomaticMaskGenerator):
    """``segment_anything`` 1.0's per-batch flow: decode all ``points_per_batch`` points in one
    call, upsample every candidate to full resolution, then filter; dense boxes and RLE.
    Use inside :func:`official_order` for the official arithmetic as well."""

    def _process_batch(self, points, crop_box, orig_size):  # type: ignore[no-untyped-def]
        p = self.predictor
        thr = p.model.mask_threshold
        coords = p.transform.apply_coords(points, p.original_size)
        in_points = torch.as_tensor(coords, dtype=torch.float)[:, None, :]
        in_labels = torch.ones(in_points.shape[:2], dtype=torch.int)
        with self._stage("decoder"):
            low, iou = p.predict_low_res_torch(in_points, in_labels, multimask_output=True)
        with self._stage("upsample"):
            masks = p.model.postprocess_masks(low, p.input_size, p.original_size)
        masks, iou = masks.flatten(0, 1), iou.flatten(0, 1)
        pts = torch.as_tensor(np.repeat(points, masks.shape[0] // len(points), axis=0))
        with self._stage("filter"):
            keep = iou > self.pred_iou_thresh
            masks, iou, pts = masks[keep], iou[keep], pts[keep]
            stability = calculate_stability_score(masks, thr, self.stability_score_offset)
            keep = stability >= self.stability_score_thresh
            masks, iou, pts, stability = masks[keep], iou[keep], pts[keep], stability[keep]
            masks = masks > thr
            boxes = dense_mask_to_box(masks)
            keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            masks, iou, pts, stability, boxes = (
                masks[keep],
                iou[keep],
                pts[keep],
                stability[keep],
                boxes[keep],
            )
            masks = uncrop_masks(masks, crop_box, *orig_size)
        with self._stage("rle"):
            rles = transposed_rle(masks)
        return _Candidates(
            rles=rles,
            boxes=boxes,
            iou_preds=iou,
            stability=stability,
            points=pts,
            crop_boxes=torch.zeros(len(rles), 4, dtype=torch.long),
        )
