"""Losses: the semi-coupled mask loss through the teacher's frozen prompt encoder and mask
decoder (the distillation paper's ablation; the decoupled MSE is PyTorch's), and SAM's mask
loss for fine-tuning on ground truth: focal and Dice at 20:1, plus the MSE of the predicted
IoU against the real one."""

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


#: SAM's weights (paper, appendix "Training algorithm"): focal : Dice = 20 : 1, IoU MSE 1.
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0


def focal_loss_per_mask(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet's, as SAM uses it) of ``(N, ...)`` logits against 0/1
    targets, the mean over each mask's pixels: ``(N,)``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def dice_loss_per_mask(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0
) -> torch.Tensor:
    """Soft-Dice loss of each of ``(N, ...)`` logits against 0/1 targets: ``(N,)``."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def mask_iou_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each thresholded mask (``logits > 0``) with its 0/1 target, ``(N,)``, without
    gradient; two empty masks agree (1)."""
    with torch.no_grad():
        pred = (logits > 0).flatten(1)
        t = target.flatten(1) > 0.5
        inter = (pred & t).sum(1).float()
        union = (pred | t).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_mask_loss(
    logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAM's loss for ``M`` candidate masks per prompt.

    Args:
        logits: ``(N, M, h, w)`` mask logits (M = 3 for multimask output, else 1).
        iou_pred: ``(N, M)`` predicted IoUs.
        target: ``(N, h, w)`` 0/1 ground truth in the logits' frame.

    Returns:
        ``(N,)`` losses: of each prompt's best candidate (lowest focal + Dice, as SAM
        trains ambiguous prompts), 20 × focal + Dice, plus the MSE of every candidate's
        predicted IoU against its real one; and the parts (``focal``, ``dice``, ``iou_mse``,
        ``iou``: the best candidate's real IoU), each ``(N,)``.
    """
    n, m = logits.shape[:2]
    flat = logits.reshape(n * m, *logits.shape[2:])
    tgt = target[:, None].expand(n, m, *target.shape[1:]).reshape_as(flat)
    focal = focal_loss_per_mask(flat, tgt).view(n, m)
    dice = dice_loss_per_mask(flat, tgt).view(n, m)
    real_iou = mask_iou_per_mask(flat, tgt).view(n, m)
    iou_mse = ((iou_pred - real_iou) ** 2).mean(1)
    mask_loss = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
    best = mask_loss.argmin(1)
    rows = torch.arange(n, device=logits.device)
    loss = mask_loss[rows, best] + IOU_WEIGHT * iou_mse
    parts = {
        "focal": focal[rows, best],
        "dice": dice[rows, best],
        "iou_mse": iou_mse,
        "iou": real_iou[rows, best],
    }
    return loss, parts


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
