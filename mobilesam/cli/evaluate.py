"""``mobilesam eval miou|coco``: a model's masks against another model's, or against COCO
ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import atomic_write
from ..progress import progress_bar
from .common import (
    add_command,
    add_count_arg,
    add_device_arg,
    add_group,
    add_out_arg,
    add_precision_arg,
    add_quiet_arg,
    existing_file,
    existing_folder,
    require_extra,
)
from .models import add_model_args, checkpoint_path

if TYPE_CHECKING:
    from .ranks import Ranks

DOC = """\
Evaluate a model's masks: against another model's, or against COCO ground truth.

"eval miou" is the MobileSAM paper's fidelity protocol: the same random point and box
prompts go to both models and the mean IoU of their masks is reported. "eval coco" is the
SAM paper's zero-shot instance segmentation: boxes prompt the model and COCOeval scores
the masks. "eval miou" needs the eval extra for its plot (pip install "mobilesam[eval]").
"""

MIOU_EXAMPLES = """
mobilesam eval miou --checkpoint run/student.pt --reference-checkpoint mobile_sam.pt \\
    --data photos/
mobilesam eval miou --model mobilesam --reference-model sam_vit_h --data val/ \\
    --prompts point box --distances 16 64 256 --n-prompts 20 --out eval/
torchrun --nproc_per_node 4 -m mobilesam eval miou --model mobilesam \\
    --reference-model sam_vit_h --data val/ --out eval/
"""

COCO_EXAMPLES = """
mobilesam eval coco --checkpoint mobile_sam.pt --images val2017/ \\
    --annotations instances_val2017.json --out coco/
mobilesam eval coco --model mobilesam --images val2017/ --annotations instances_val2017.json \\
    --detections detector_results.json --multimask --max-images 100
torchrun --nproc_per_node 4 -m mobilesam eval coco --model mobilesam --images val2017/ \\
    --annotations instances_val2017.json --out coco/
"""


def cmd_miou(args: argparse.Namespace) -> int:
    """Score a model's masks against a reference model's (mIoU, the paper's fidelity table).

    For each image, --n-prompts random points and boxes (and, with --distances, pairs of
    points that many pixels apart) prompt both models with the same prompts; the IoU of the
    two best masks is averaged per prompt kind. The images come from folders, image files
    or SA-1B tar shards; unreadable ones are skipped. It writes miou.json, miou.md (a
    table) and miou.png (a plot) to the --out folder. Under torchrun the processes share
    the images and process 0 writes the figures, the same as one process's.
    """
    require_extra("eval", "matplotlib")
    from ..training.data import collect_image_refs
    from .ranks import join_ranks

    refs = collect_image_refs(args.data)[: args.max_images]
    if not refs:
        raise ValueError(f"no images in {' '.join(args.data)}")
    ranks = join_ranks()
    try:
        return run_miou(args, ranks, refs)
    finally:
        ranks.close()


def run_miou(args: argparse.Namespace, ranks: Ranks, refs: list[Any]) -> int:
    """:func:`cmd_miou` on the ranks of a job (one process without torchrun)."""
    from ..build import build_sam
    from ..evaluation.miou import markdown_table, plot_summary
    from ..predictor import SamPredictor
    from .ranks import rank_device

    ckpt = ranks.local_first(lambda: checkpoint_path(args))
    reference_ckpt = ranks.local_first(lambda: checkpoint_path(args, "reference"))
    device = rank_device(args.device, ranks)
    model = SamPredictor(build_sam(ckpt).to(device), precision=args.precision)
    reference = SamPredictor(build_sam(reference_ckpt).to(device))
    scored_images = ranks.gather(score_share(model, reference, refs, args, ranks))
    if scored_images is None:  # not rank 0: rank 0 writes the figures
        return 0
    summary, scored = summarize(scored_images)
    title = f"{ckpt.name} vs {reference_ckpt.name}"
    record = {
        "model": str(ckpt),
        "reference": str(reference_ckpt),
        "images": scored,  # read and scored; unreadable ones are logged and skipped
        "n_prompts_per_image": args.n_prompts,
        "seed": args.seed,
        "summary": summary,
    }
    out = Path(args.out)
    text = markdown_table(summary, title)
    atomic_write(out / "miou.md", lambda tmp: tmp.write_text(text))
    plot_summary(summary, str(out / "miou.png"), title)
    text = strict_json(record, out / "miou.json")
    atomic_write(out / "miou.json", lambda tmp: tmp.write_text(text))
    for kind, s in summary.items():
        print(f"{kind:>16}: mIoU {s['miou']:.4f} ± {s['std']:.4f} (n={s['n']})")
    print(f"wrote miou.json, miou.md, miou.png to {out}")
    return 0


def strict_json(record: dict[str, Any], path: Path) -> str:
    """``record`` as standard JSON text (``allow_nan=False``); a NaN or infinite figure is
    refused with a ValueError naming ``path`` rather than written as a bare ``NaN``."""
    try:
        return json.dumps(record, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(
            f"not writing {path}: a result is NaN or infinite (a broken model or input?)"
        ) from None


def score_images(
    model: Any, reference: Any, refs: list[Any], args: argparse.Namespace
) -> tuple[dict[str, dict[str, float]], int]:
    """``(summary per prompt kind, images scored)`` of two predictors on the images ``refs``
    (:class:`~mobilesam.training.data.ImageRef`) in one process; image ``i``'s prompts are
    seeded with ``args.seed + i``."""
    return summarize([score_share(model, reference, refs, args)])


def score_share(
    model: Any,
    reference: Any,
    refs: list[Any],
    args: argparse.Namespace,
    ranks: Ranks | None = None,
) -> list[tuple[int, dict[str, list[float]] | None]]:
    """This rank's share of ``refs`` (image ``i`` goes to rank ``i % world``) scored:
    ``(i, IoUs per prompt kind)`` per image, ``None`` for an unreadable one (logged). Image
    ``i``'s prompts are seeded with ``args.seed + i`` whichever rank scores it."""
    from ..evaluation.miou import score_image
    from ..training.data import ImageReader

    mine = ranks.share(range(len(refs))) if ranks is not None else list(range(len(refs)))
    show = not args.quiet and (ranks is None or ranks.is_main)
    reader, scored = ImageReader(), []
    bar = progress_bar(len(mine), "eval", unit="img", enabled=show)
    for i in mine:
        image = reader.try_read(refs[i])
        ious = None
        if image is not None:
            model.set_image(image)
            reference.set_image(image)
            kinds, distances = tuple(args.prompts), tuple(args.distances)
            ious = score_image(
                model, reference, args.n_prompts, kinds, distances, seed=args.seed + i
            ).ious
        scored.append((i, ious))
        bar.update(1)
    bar.close()
    reader.close()
    return scored


def summarize(
    shares: list[list[tuple[int, dict[str, list[float]] | None]]],
) -> tuple[dict[str, dict[str, float]], int]:
    """``(summary per prompt kind, images scored)`` of the shares :func:`score_share`
    returned, merged in image order, so the figures are the same however the images were
    shared."""
    from ..evaluation.miou import Scores

    total, scored = Scores(), 0
    for _, ious in sorted((item for share in shares for item in share), key=lambda t: t[0]):
        if ious is not None:
            total.merge(Scores(ious))
            scored += 1
    return total.summary(), scored


def cmd_coco(args: argparse.Namespace) -> int:
    """Box-prompted zero-shot instance segmentation AP on COCO-format data (the SAM paper's
    protocol).

    Each box (the ground-truth boxes, or a detector's with --detections) prompts the model,
    each mask is scored by its predicted IoU times the box's detection score, and COCOeval
    (segm) gives AP, AP50, AP75, APs, APm and APl. It writes coco.json (the figures and the
    settings) and coco.md to the --out folder. Under torchrun the processes share the
    images and process 0 scores them all, with the same figures as one process.
    """
    from ..evaluation.coco import read_annotations, read_detections
    from .ranks import join_ranks

    # both files are checked before the model loads: a malformed one is one line, at once
    gt = read_annotations(args.annotations)
    dets = read_detections(args.detections) if args.detections else None
    ranks = join_ranks()
    try:
        return run_coco(args, ranks, gt, dets)
    finally:
        ranks.close()


def run_coco(args: argparse.Namespace, ranks: Ranks, gt: Any, dets: list[dict] | None) -> int:
    """:func:`cmd_coco` on the ranks of a job (one process without torchrun)."""
    from ..build import build_sam
    from ..evaluation.coco import (
        box_prompts,
        coco_image_ids,
        markdown,
        score_coco,
        segment_coco_images,
    )
    from ..precision import precision_name
    from ..predictor import SamPredictor
    from .ranks import rank_device

    ckpt = ranks.local_first(lambda: checkpoint_path(args))
    device = rank_device(args.device, ranks)
    predictor = SamPredictor(build_sam(ckpt).to(device), precision=args.precision)
    detections = str(args.detections) if args.detections else None
    image_ids = coco_image_ids(gt, args.max_images)
    mine = ranks.share(image_ids)
    bar = progress_bar(len(mine), "coco", unit="img", enabled=ranks.is_main and not args.quiet)
    per_image = segment_coco_images(
        predictor,
        args.images,
        gt,
        box_prompts(gt, dets),
        mine,
        args.multimask,
        lambda done, total: bar.update(1),
    )
    bar.close()
    shares = ranks.gather(per_image)
    if shares is None:  # not rank 0: rank 0 scores and writes
        return 0
    result = score_coco(gt, image_ids, [item for share in shares for item in share])
    record = {
        **result,
        "settings": {
            "checkpoint": str(ckpt),
            "annotations": str(args.annotations),
            "detections": detections,
            "multimask": args.multimask,
            "max_images": args.max_images,
            "precision": precision_name(predictor.dtype),
        },
    }
    out = Path(args.out)
    text = strict_json(record, out / "coco.json")
    atomic_write(out / "coco.json", lambda tmp: tmp.write_text(text))
    title = f"{ckpt.name}: box-prompted instance segmentation"
    atomic_write(out / "coco.md", lambda tmp: tmp.write_text(markdown(result, title)))
    print(" ".join(f"{k} {result[k]:.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    print(f"wrote coco.json and coco.md to {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    metrics = add_group(sub, "eval", DOC, MIOU_EXAMPLES + COCO_EXAMPLES, "METRIC")
    add_miou_parser(metrics)
    add_coco_parser(metrics)


def add_miou_parser(metrics: argparse._SubParsersAction) -> None:
    m = add_command(metrics, "miou", cmd_miou, MIOU_EXAMPLES)
    add_model_args(m, default=None, what="the model evaluated")
    add_model_args(m, default=None, prefix="reference", what="the model compared to")
    m.add_argument(
        "--data", nargs="+", required=True, metavar="PATH", help="image folders, images or tars"
    )
    m.add_argument(
        "--prompts",
        nargs="+",
        default=["point", "box"],
        choices=["point", "box"],
        help="prompt kinds scored (default both)",
    )
    m.add_argument(
        "--distances",
        nargs="*",
        type=float,
        default=[],
        metavar="PIXELS",
        help="also two points this many pixels apart (the paper's FastSAM table)",
    )
    add_count_arg(m, "--n-prompts", 10, "prompts per image and kind")
    add_count_arg(m, "--max-images", None, "only the first N images")
    m.add_argument("--seed", type=int, default=0, help="seed of image 0's prompts (default 0)")
    add_out_arg(m, "mobilesam_eval", "output folder")
    add_quiet_arg(m)
    add_device_arg(m)
    add_precision_arg(m)


def add_coco_parser(metrics: argparse._SubParsersAction) -> None:
    c = add_command(metrics, "coco", cmd_coco, COCO_EXAMPLES)
    add_model_args(c, default=None, what="the model evaluated")
    c.add_argument(
        "--images", type=existing_folder, required=True, metavar="FOLDER", help="the images' folder"
    )
    c.add_argument(
        "--annotations", type=existing_file, required=True, metavar="FILE", help="ground truth JSON"
    )
    c.add_argument(
        "--detections",
        type=existing_file,
        metavar="FILE",
        help="COCO results JSON of a detector's boxes (default: the ground-truth boxes)",
    )
    c.add_argument("--multimask", action="store_true", help="best of three masks per box")
    add_count_arg(c, "--max-images", None, "only the first N images")
    add_out_arg(c, "mobilesam_coco", "output folder")
    add_quiet_arg(c)
    add_device_arg(c)
    add_precision_arg(c)
