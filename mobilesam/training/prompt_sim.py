"""Prompts simulated as in SAM's training (paper, appendix "Training algorithm"), and the loss
of one image's interactive session.

For each ground-truth mask, with equal probability:

- a **box**: the mask's tight box, each side's coordinates moved by Gaussian noise of
  standard deviation 10% of that side's length, at most 20 pixels (of a 1024-pixel input;
  scaled with the input size), kept inside the image;
- a **point** drawn uniformly from the mask.

Then correction rounds: a new point is drawn uniformly from the error region of the previous
prediction (a false negative gives a positive click, a false positive a negative one), and
the previous round's low-res logits are fed back as ``mask_input``. A single point asks for
the three multimask outputs and the loss takes the best of them; every later round (and a
box) asks for the single output. Each round's loss is SAM's (:func:`~.losses.sam_mask_loss`);
the session's is their mean. The mask fed back is the candidate with the highest predicted
IoU, as a user refining a click gets it, and carries no gradient.

Coordinates are (x, y) pixels of the model's input frame (the image resized so its longest
side is the input size, padded bottom-right); masks for the loss live in the low-res frame
of the decoder's logits (4× the embedding grid, covering the padded input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder
from .losses import sam_mask_loss

#: Box noise: standard deviation as a share of the box side, and its cap in pixels of a
#: 1024-pixel input.
BOX_NOISE, BOX_NOISE_MAX_PX = 0.1, 20.0


@dataclass(frozen=True)
class InitialPrompts:
    """The first prompt of each of ``K`` masks: ``is_box`` ``(K,)`` bool, ``points``
    ``(K, 2)`` (x, y) (used where not a box) and ``boxes`` ``(K, 4)`` XYXY (used where a
    box), float32, in the input frame."""

    is_box: np.ndarray
    points: np.ndarray
    boxes: np.ndarray


def initial_prompts(masks: np.ndarray, img_size: int, rng: np.random.Generator) -> InitialPrompts:
    """Draw a noisy box or a uniform point for each of ``masks`` ``(K, h, w)`` bool (in the
    input frame, none empty), with equal probability.

    The box is ``[x0, y0, x1, y1]`` with ``x1``, ``y1`` the last pixel inside (SAM's
    convention); the noise cap is :data:`BOX_NOISE_MAX_PX` × ``img_size`` / 1024.
    """
    k, h, w = masks.shape
    is_box = rng.random(k) < 0.5
    points = np.zeros((k, 2), np.float32)
    boxes = np.zeros((k, 4), np.float32)
    cap = BOX_NOISE_MAX_PX * img_size / 1024
    for i in range(k):
        ys, xs = np.nonzero(masks[i])
        j = int(rng.integers(len(xs)))
        points[i] = xs[j], ys[j]
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
        std = BOX_NOISE * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0], np.float64)
        noise = np.clip(rng.normal(0, 1, 4) * std, -cap, cap)
        noisy = np.array([x0, y0, x1, y1], np.float64) + noise
        noisy[[0, 2]] = np.clip(noisy[[0, 2]], 0, w - 1)
        noisy[[1, 3]] = np.clip(noisy[[1, 3]], 0, h - 1)
        boxes[i] = [min(noisy[0], noisy[2]), min(noisy[1], noisy[3])] + [
            max(noisy[0], noisy[2]),
            max(noisy[1], noisy[3]),
        ]
    return InitialPrompts(is_box, points, boxes)


def correction_clicks(
    pred: torch.Tensor, target: torch.Tensor, stride: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask from the error region of a prediction.

    Args:
        pred: ``(N, h, w)`` bool predicted masks, low-res frame (the valid region only).
        target: ``(N, h, w)`` bool ground truth, same frame.
        stride: input-frame pixels per low-res cell (4).
        gen: a CPU generator; the draws do not depend on the device.

    Returns:
        ``(N, 1, 2)`` float32 (x, y) input-frame coordinates, uniform within the drawn cell,
        and ``(N, 1)`` int64 labels: 1 where the cell is a false negative, 0 a false
        positive, -1 (not a point) where there is no error.
    """
    pred, target = pred.cpu(), target.cpu()
    err = (pred ^ target).flatten(1)
    n, w = err.shape[0], pred.shape[-1]
    has = err.any(1)
    weights = torch.where(has[:, None], err.float(), torch.ones_like(err, dtype=torch.float))
    cell = torch.multinomial(weights, 1, generator=gen)[:, 0]
    offset = torch.rand(n, 2, generator=gen) * stride
    xy = torch.stack([(cell % w).float(), (cell // w).float()], 1) * stride + offset
    labels = target.flatten(1).gather(1, cell[:, None])[:, 0].long()
    labels = torch.where(has, labels, torch.full_like(labels, -1))
    xy = torch.where(has[:, None], xy, torch.zeros_like(xy))
    return xy[:, None], labels[:, None]


def interactive_loss(
    embedding: torch.Tensor,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    prompts: InitialPrompts,
    target: torch.Tensor,
    valid: tuple[int, int],
    corrections: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one image's simulated session over its ``K`` masks.

    Args:
        embedding: ``(1, C, g, g)`` image embedding.
        prompts: the first prompt of each mask (:func:`initial_prompts`).
        target: ``(K, L, L)`` float 0/1 ground truth in the low-res frame (``L = 4g``).
        valid: ``(hl, wl)``, the low-res cells covering the image (the rest is padding,
            left out of the loss and of the clicks).
        corrections: rounds after the first, each adding a click and feeding the previous
            logits back.
        gen: CPU generator of the clicks.

    Returns:
        The mean loss over masks and rounds (a scalar with grad), and figures to log: the
        means of ``focal``, ``dice`` and ``iou_mse``, and the real IoU of the first and last
        rounds (``iou_first``, ``iou_last``).
    """
    device = embedding.device
    img_size = prompt_encoder.input_image_size[0]
    stride = img_size / prompt_encoder.mask_input_size[0]
    hl, wl = valid
    pe = prompt_encoder.get_dense_pe()
    total = embedding.new_zeros(())
    sums = dict.fromkeys(("focal", "dice", "iou_mse", "iou_first", "iou_last"), 0.0)
    count = 0
    is_box = torch.from_numpy(prompts.is_box)
    for box_group in (False, True):
        rows = torch.nonzero(is_box == box_group)[:, 0]
        n = len(rows)
        if n == 0:
            continue
        gt = target[rows.to(target.device)][:, :hl, :wl]
        if box_group:
            first = (None, torch.from_numpy(prompts.boxes[rows.numpy()]).to(device))
        else:
            pts = torch.from_numpy(prompts.points[rows.numpy()])[:, None].to(device)
            first = ((pts, torch.ones(n, 1, dtype=torch.int64, device=device)), None)
        clicks = torch.zeros(n, 0, 2, device=device)
        click_labels = torch.zeros(n, 0, dtype=torch.int64, device=device)
        mask_input = None
        for r in range(1 + corrections):
            points, boxes = first
            if box_group:
                points = (clicks, click_labels) if r > 0 else None
            elif r > 0:
                points = (
                    torch.cat([points[0], clicks], 1),
                    torch.cat([points[1], click_labels], 1),
                )
            sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            multimask = not box_group and r == 0
            logits, iou_pred = mask_decoder(embedding, pe, sparse, dense, multimask)
            loss, parts = sam_mask_loss(logits[..., :hl, :wl].float(), iou_pred.float(), gt)
            total = total + loss.sum()
            count += n
            for key in ("focal", "dice", "iou_mse"):
                sums[key] += float(parts[key].detach().sum())
            if r == 0:
                sums["iou_first"] += float(parts["iou"].sum())
            if r == corrections:
                sums["iou_last"] += float(parts["iou"].sum())
            if r == corrections:
                break
            with torch.no_grad():
                pick = iou_pred.argmax(1) if multimask else torch.zeros(n, dtype=torch.long)
                prev = logits[torch.arange(n), pick.to(logits.device)].detach()
                xy, labels = correction_clicks(prev[:, :hl, :wl] > 0, gt > 0.5, stride, gen)
            clicks = torch.cat([clicks, xy.to(device)], 1)
            click_labels = torch.cat([click_labels, labels.to(device)], 1)
            mask_input = prev[:, None]
    k = len(prompts.is_box)
    logs = {key: sums[key] / (k if key.startswith("iou_") else count) for key in sums}
    return total / count, logs
