"""Losses: the decoupled embedding MSE, and the semi-coupled mask loss through the teacher's
frozen prompt encoder and mask decoder (the paper's ablation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..masks import batched_mask_to_box
from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean soft-Dice loss of ``(N, ...)`` logits against 0/1 targets."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def mask_distillation_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    input_sizes: torch.Tensor,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    n_points: int,
    generator: torch.Generator,
    student_decoder: MaskDecoder | None = None,
) -> torch.Tensor:
    """BCE + Dice between the frozen decoder's low-res masks from the student's embedding and
    the teacher's own masks, for ``n_points`` random single-point prompts per image and the
    boxes of those teacher masks.

    Args:
        student_emb, teacher_emb: ``(B, C, h, w)``.
        input_sizes: ``(B, 2)`` (h, w) of each resized image inside the padded input; points
            are drawn there, as (x, y) in the input frame.
        student_decoder: decodes the student's masks (a trainable copy, when fine-tuning the
            decoder); default ``mask_decoder``, the frozen teacher decoder.
    """
    if student_decoder is None:
        student_decoder = mask_decoder
    pe = prompt_encoder.get_dense_pe()
    stride = prompt_encoder.input_image_size[0] / prompt_encoder.mask_input_size[0]
    total = student_emb.new_zeros(())
    for b in range(student_emb.shape[0]):
        h, w = (float(v) for v in input_sizes[b])
        pts = torch.rand(n_points, 1, 2, generator=generator) * torch.tensor([w, h])
        pts = pts.to(student_emb.device)
        labels = torch.ones(n_points, 1, dtype=torch.int, device=student_emb.device)
        sparse, dense = prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        with torch.no_grad():
            t_logits, _ = mask_decoder(teacher_emb[b : b + 1], pe, sparse, dense, False)
            target = (t_logits > 0).float()
            boxes = batched_mask_to_box(target[:, 0] > 0).float() * stride
            box_sparse, box_dense = prompt_encoder(points=None, boxes=boxes, masks=None)
            tb_logits, _ = mask_decoder(teacher_emb[b : b + 1], pe, box_sparse, box_dense, False)
            box_target = (tb_logits > 0).float()
        s_logits, _ = student_decoder(student_emb[b : b + 1], pe, sparse, dense, False)
        sb_logits, _ = student_decoder(student_emb[b : b + 1], pe, box_sparse, box_dense, False)
        for logits, tgt in ((s_logits, target), (sb_logits, box_target)):
            total = total + F.binary_cross_entropy_with_logits(logits, tgt) + dice_loss(logits, tgt)
    return total / student_emb.shape[0]
