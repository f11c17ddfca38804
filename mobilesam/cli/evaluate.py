"""``mobilesam eval miou|coco``: a model's masks against another model's, or against COCO
ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from ..progress import progress_bar
from .common import (
    add_command,
    add_count_arg,
    add_group,
    add_out_arg,
    add_precision_arg,
    add_quiet_arg,
    existing_file,
    existing_folder,
    require_extra,
)
from .models import add_model_args, checkpoint_path

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
"""

COCO_EXAMPLES = """
mobilesam eval coco --checkpoint mobile_sam.pt --images val2017/ \\
    --annotations instances_val2017.json --out coco/
mobilesam eval coco --model mobilesam --images val2017/ --annotations instances_val2017.json \\
    --detections detector_results.json --multimask --max-images 100
"""


def cmd_miou(args: argparse.Namespace) -> int:
    """Score a model's masks against a reference model's (mIoU, the paper's fidelity table).

    For each image, --n-prompts random points and boxes (and, with --distances, pairs of
    points that many pixels apart) prompt both models with the same prompts; the IoU of the
    two best masks is averaged per prompt kind. The images come from folders, image files
    or SA-1B tar shards; unreadable ones are skipped. It writes miou.json, miou.md (a
    table) and miou.png (a plot) to the --out folder.
    """
    require_extra("eval", "matplotlib")
    from ..build import build_sam
    from ..evaluation.miou import markdown_table, plot_summary
    from ..predictor import SamPredictor
    from ..training.data import collect_image_refs

    refs = collect_image_refs(args.data)[: args.max_images]
    if not refs:
        raise ValueError(f"no images in {' '.join(args.data)}")
    ckpt, reference_ckpt = checkpoint_path(args), checkpoint_path(args, "reference")
    model = SamPredictor(build_sam(ckpt), precision=args.precision)
    reference = SamPredictor(build_sam(reference_ckpt))
    summary, scored = score_images(model, reference, refs, args)
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
    (:class:`~mobilesam.training.data.ImageRef`); image ``i``'s prompts are seeded with
    ``args.seed + i``."""
    from ..evaluation.miou import Scores, score_image
    from ..training.data import ImageReader

    reader, total, scored = ImageReader(), Scores(), 0
    bar = progress_bar(len(refs), "eval", unit="img", enabled=not args.quiet)
    for i, ref in enumerate(refs):
        image = reader.try_read(ref)
        if image is not None:
            model.set_image(image)
            reference.set_image(image)
            kinds, distances = tuple(args.prompts), tuple(args.distances)
            total.merge(
                score_image(model, reference, args.n_prompts, kinds, distances, seed=args.seed + i)
            )
            scored += 1
        bar.update(1)
    bar.close()
    reader.close()
    return total.summary(), scored


def cmd_coco(args: argparse.Namespace) -> int:
    """Box-prompted zero-shot instance segmentation AP on COCO-format data (the SAM paper's
    protocol).

    Each box (the ground-truth boxes, or a detector's with --detections) prompts the model,
    each mask is scored by its predicted IoU times the box's detection score, and COCOeval
    (segm) gives AP, AP50, AP75, APs, APm and APl. It writes coco.json (the figures and the
    settings) and coco.md to the --out folder.
    """
    from ..build import build_sam
    from ..evaluation.coco import (
        CocoSettings,
        evaluate_coco,
        markdown,
        read_annotations,
        read_detections,
    )
    from ..precision import precision_name
    from ..predictor import SamPredictor

    # both files are checked before the model loads: a malformed one is one line, at once
    gt = read_annotations(args.annotations)
    dets = read_detections(args.detections) if args.detections else None
    ckpt = checkpoint_path(args)
    predictor = SamPredictor(build_sam(ckpt), precision=args.precision)
    detections = str(args.detections) if args.detections else None
    settings = CocoSettings(detections, args.multimask, args.max_images)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "coco", unit="img", enabled=not args.quiet)
        bar.update(1)

    result = evaluate_coco(predictor, args.images, gt, settings, progress, detections=dets)
    if bar is not None:
        bar.close()
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
    add_precision_arg(c)
