"""``mobilesam eval miou``: the paper's fidelity protocol, model A's masks against B's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .._atomic import atomic_write
from .common import CliError, add_precision_arg, require_extra

EXAMPLES = """examples:
  mobilesam eval miou --model run/student.pt --reference mobile_sam.pt --data photos/
  mobilesam eval miou --model mobile_sam.pt --reference sam_vit_h_4b8939.pth --data val/ \\
      --prompts point box --distances 16 64 256 --n-prompts 20 --out eval/
"""


def cmd_miou(args: argparse.Namespace) -> int:
    require_extra("eval", "matplotlib")
    from ..build import build_sam
    from ..evaluation.miou import Scores, markdown_table, plot_summary, score_image
    from ..hub import resolve_checkpoint
    from ..predictor import SamPredictor
    from ..progress import progress_bar
    from ..training.data import ImageReader, collect_images

    refs = collect_images(args.data)
    if args.max_images:
        refs = refs[: args.max_images]
    if not refs:
        raise ValueError(f"no images in {' '.join(args.data)}")
    model = SamPredictor(build_sam(resolve_checkpoint(args.model)), precision=args.precision)
    reference = SamPredictor(build_sam(resolve_checkpoint(args.reference)))
    reader, total, scored = ImageReader(), Scores(), 0
    bar = progress_bar(len(refs), "eval", unit="img", enabled=not args.quiet)
    for i, ref in enumerate(refs):
        image = reader.try_read(ref)
        if image is not None:
            model.set_image(image)
            reference.set_image(image)
            total.merge(
                score_image(
                    model,
                    reference,
                    args.n_prompts,
                    tuple(args.prompts),
                    tuple(args.distances),
                    seed=args.seed + i,
                )
            )
            scored += 1
        bar.update(1)
    bar.close()
    summary = total.summary()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(args.model).name} vs {Path(args.reference).name}"
    record = {
        "model": args.model,
        "reference": args.reference,
        "images": scored,  # read and scored; unreadable ones are logged and skipped
        "n_prompts_per_image": args.n_prompts,
        "seed": args.seed,
        "summary": summary,
    }
    (out / "miou.json").write_text(json.dumps(record, indent=2))
    (out / "miou.md").write_text(markdown_table(summary, title))
    plot_summary(summary, str(out / "miou.png"), title)
    for kind, s in summary.items():
        print(f"{kind:>16}: mIoU {s['miou']:.4f} ± {s['std']:.4f} (n={s['n']})")
    print(f"wrote miou.json, miou.md, miou.png to {out}")
    return 0


COCO_EXAMPLES = """examples:
  mobilesam eval coco --checkpoint mobile_sam.pt --images val2017/ \\
      --annotations instances_val2017.json --out coco/
  mobilesam eval coco --model mobilesam --images val2017/ --annotations instances_val2017.json \\
      --detections detector_results.json --multimask --max-images 100
"""


def cmd_coco(args: argparse.Namespace) -> int:
    require_extra("eval", "pycocotools")
    from ..build import build_sam
    from ..evaluation.coco import CocoSettings, evaluate_coco, markdown
    from ..hub import resolve_checkpoint
    from ..precision import precision_name
    from ..predictor import SamPredictor
    from ..progress import progress_bar

    for flag, path in (("--annotations", args.annotations), ("--detections", args.detections)):
        if path is not None and not Path(path).is_file():
            raise CliError(f"{flag} {path}: no such file")
    if not Path(args.images).is_dir():
        raise CliError(f"--images {args.images}: no such folder")
    if args.max_images is not None and args.max_images < 1:
        raise CliError("--max-images must be at least 1")
    ckpt = resolve_checkpoint(args.checkpoint or args.model, progress=True)
    predictor = SamPredictor(build_sam(ckpt), precision=args.precision)
    settings = CocoSettings(args.detections, args.multimask, args.max_images)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "coco", unit="img", enabled=not args.quiet)
        bar.update(1)

    result = evaluate_coco(predictor, args.images, args.annotations, settings, progress)
    if bar is not None:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        **result,
        "settings": {
            "checkpoint": str(ckpt),
            "annotations": str(args.annotations),
            "detections": args.detections,
            "multimask": args.multimask,
            "max_images": args.max_images,
            "precision": precision_name(predictor.dtype),
        },
    }
    atomic_write(out / "coco.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    title = f"{Path(str(ckpt)).name}: box-prompted instance segmentation"
    atomic_write(out / "coco.md", lambda tmp: tmp.write_text(markdown(result, title)))
    print(" ".join(f"{k} {result[k]:.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    print(f"wrote coco.json and coco.md to {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluation: mIoU against another model, or COCO box-prompted AP",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="METRIC")
    m = esub.add_parser(
        "miou",
        help="mIoU of --model's masks against --reference's",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--model", required=True, help="checkpoint (or zoo name) evaluated")
    m.add_argument("--reference", required=True, help="checkpoint (or zoo name) compared to")
    m.add_argument("--data", nargs="+", required=True, help="image folders, images or tars")
    m.add_argument("--prompts", nargs="+", default=["point", "box"], choices=["point", "box"])
    m.add_argument(
        "--distances",
        nargs="*",
        type=float,
        default=[],
        help="also two points this many pixels apart (the paper's FastSAM table)",
    )
    m.add_argument("--n-prompts", type=int, default=10, help="prompts per image and kind")
    m.add_argument("--max-images", type=int, default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default="mobilesam_eval")
    m.add_argument("--quiet", action="store_true")
    add_precision_arg(m)
    m.set_defaults(func=cmd_miou)
    c = esub.add_parser(
        "coco",
        help="zero-shot instance segmentation AP on COCO-format data, prompted by boxes",
        description="Box-prompted zero-shot instance segmentation (the SAM paper's protocol): "
        "each box prompts the model, masks are scored by predicted IoU × detection score, and "
        "COCOeval (segm) gives AP, AP50, AP75, APs, APm, APl.",
        epilog=COCO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="path to the checkpoint evaluated")
    src.add_argument("--model", help="model-zoo name (downloaded, checksum-verified)")
    c.add_argument("--images", required=True, help="folder of the annotation file's images")
    c.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    c.add_argument(
        "--detections", help="COCO results JSON of a detector's boxes (default: the GT boxes)"
    )
    c.add_argument("--multimask", action="store_true", help="best of three masks per box")
    c.add_argument("--max-images", type=int, default=None)
    c.add_argument("--out", default="mobilesam_coco")
    c.add_argument("--quiet", action="store_true")
    add_precision_arg(c)
    c.set_defaults(func=cmd_coco)
