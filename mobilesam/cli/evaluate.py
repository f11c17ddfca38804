"""``mobilesam eval miou``: the paper's fidelity protocol, model A's masks against B's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_precision_arg, require_extra

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluation: mIoU of one model against another",
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
