"""mIoU of model A's masks against reference B's masks for the same prompts.

Prompt kinds, all drawn from a generator seeded per image so both models see the same ones:

- ``point``: one random foreground point; each model answers with its best-scoring of the
  three multimask outputs (SAM's advice for a single point);
- ``box``: the box of the reference's ``point`` mask; single-mask output;
- ``two_points@D``: two foreground points ``D`` pixels apart (the paper's FastSAM table);
  single-mask output.

Coordinates are (x, y) pixels of the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..predictor import SamPredictor


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass
class Scores:
    """IoUs per prompt kind."""

    ious: dict[str, list[float]] = field(default_factory=dict)

    def add(self, kind: str, value: float) -> None:
        self.ious.setdefault(kind, []).append(value)

    def merge(self, other: Scores) -> None:
        for k, v in other.ious.items():
            self.ious.setdefault(k, []).extend(v)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: mean (the mIoU), std, n, and a normal-approximation 95% interval."""
        out = {}
        for kind, v in self.ious.items():
            arr = np.asarray(v, dtype=np.float64)
            std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
            half = 1.96 * std / math.sqrt(len(arr)) if len(arr) > 1 else 0.0
            out[kind] = {
                "miou": float(arr.mean()),
                "std": std,
                "n": len(arr),
                "ci95": [float(arr.mean() - half), float(arr.mean() + half)],
            }
        return out


def _best(pred: SamPredictor, **kw: Any) -> np.ndarray:
    masks, scores, _ = pred.predict(**kw)
    return masks[int(np.argmax(scores))]


def _two_points(rng: np.random.Generator, h: int, w: int, d: float) -> np.ndarray | None:
    """Two (x, y) points ``d`` pixels apart inside a ``h×w`` image, shape (2, 2); None after
    100 tries (``d`` too long for the image)."""
    for _ in range(100):
        p = rng.uniform([0, 0], [w, h])
        angle = rng.uniform(0, 2 * math.pi)
        q = p + d * np.array([math.cos(angle), math.sin(angle)])
        if 0 <= q[0] < w and 0 <= q[1] < h:
            return np.stack([p, q])
    return None


def score_image(
    model: SamPredictor,
    reference: SamPredictor,
    n_prompts: int,
    kinds: tuple[str, ...] = ("point", "box"),
    distances: tuple[float, ...] = (),
    seed: int = 0,
) -> Scores:
    """IoUs for ``n_prompts`` prompts of each kind in ``kinds`` (``point``, ``box``) and each
    distance in ``distances`` (pixels), drawn from ``seed``; both predictors have the same
    image set.

    Raises:
        ValueError: ``reference`` has no image set.
    """
    if reference.original_size is None:
        raise ValueError("score_image needs an image set on both predictors (set_image)")
    h, w = reference.original_size
    rng = np.random.default_rng(seed)
    out = Scores()
    one = np.array([1])
    for _ in range(n_prompts):
        point = rng.uniform([0, 0], [w, h])[None]
        ref_mask = _best(reference, point_coords=point, point_labels=one)
        if "point" in kinds:
            out.add("point", mask_iou(_best(model, point_coords=point, point_labels=one), ref_mask))
        if "box" in kinds and ref_mask.any():
            ys, xs = np.nonzero(ref_mask)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
            a = model.predict(box=box, multimask_output=False)[0][0]
            b = reference.predict(box=box, multimask_output=False)[0][0]
            out.add("box", mask_iou(a, b))
        for d in distances:
            pts = _two_points(rng, h, w, d)
            if pts is None:
                continue
            kw = {"point_coords": pts, "point_labels": np.array([1, 1]), "multimask_output": False}
            out.add(
                f"two_points@{d:g}",
                mask_iou(model.predict(**kw)[0][0], reference.predict(**kw)[0][0]),
            )
    return out


def markdown_table(summary: dict[str, dict[str, float]], title: str) -> str:
    """A Markdown table of :meth:`Scores.summary`: mIoU, std, 95% interval and n per kind."""
    lines = [f"### {title}", "", "| prompt | mIoU | std | 95% CI | n |", "|---|---|---|---|---|"]
    for kind, s in summary.items():
        lo, hi = s["ci95"]
        lines.append(
            f"| {kind} | {s['miou']:.4f} | {s['std']:.4f} | {lo:.4f}–{hi:.4f} | {s['n']} |"
        )
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, dict[str, float]], path: str, title: str) -> None:
    """Bar chart of mIoU (with 95% intervals) per prompt kind / distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(summary)
    means = [summary[k]["miou"] for k in kinds]
    errs = [summary[k]["miou"] - summary[k]["ci95"][0] for k in kinds]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(kinds)), 3.2))
    ax.bar(kinds, means, yerr=errs, capsize=4, color="#3b7dd8")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("mIoU vs reference")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
