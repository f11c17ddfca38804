"""``mobilesam finetune``: fine-tune a checkpoint on your own instance masks."""

from __future__ import annotations

import argparse
import dataclasses
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .common import add_command, add_out_arg, add_quiet_arg
from .config import ConfigFileParser
from .distill import COUNT0, COUNT1, SHARE, _logging, add_schedule_args

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = """
mobilesam finetune --checkpoint mobile_sam.pt --coco train.json --images train/ --out run/
mobilesam finetune --checkpoint mobile_sam.pt --masks data/ --out run/ --train prompt_encoder
torchrun --nproc_per_node 4 -m mobilesam finetune --config finetune.toml
mobilesam finetune --checkpoint mobile_sam.pt --masks data/ --out run/ --resume
mobilesam segment photo.jpg --checkpoint run/model.pt --box 10,20,300,400
"""


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a SAM or MobileSAM checkpoint on your own instance masks, with SAM's
    training recipe.

    Data: COCO instance annotations (--coco FILE --images FOLDER: polygons or RLE; crowd
    annotations skipped), or a folder (--masks DATA) holding images/ and masks/, where
    masks/NAME/ holds one PNG per instance of images/NAME.jpg (non-zero pixels inside), or
    masks/NAME.png is one label image (0 background, each other value an instance). The
    train/val split hashes each image's key (--val-fraction). Broken images and annotations
    are skipped, one warning line each naming the file, and counted.

    Recipe (the SAM paper's): for each mask, a box with noise (standard deviation 10% of
    the side, at most 20 pixels) or a point drawn uniformly from it, with equal
    probability; then --corrections rounds, each adding a click drawn from the error region
    (a missed pixel gives a positive click, a spurious one a negative click) and feeding the
    previous low-res logits back as mask_input. A single point takes the best of the three
    multimask outputs. Loss: focal and Dice at 20:1 plus the MSE of the predicted IoU.
    AdamW with warm-up and cosine decay; torchrun for several processes.

    What trains: the mask decoder; --train adds prompt_encoder, image_encoder, or
    image_encoder:N (its last N stages). With the image encoder frozen, the embeddings are
    computed once and cached (OUT/embeddings, or --cache). The val split is scored before
    and after (box, centre point, point + correction click, and box AP), in summary.json.

    Writes OUT/model.pt, an official-format checkpoint every command loads (--checkpoint),
    with last.pt (for --resume), config.json, metrics.jsonl and summary.json. Every option
    is also a key of the --config file's [finetune] table.
    """
    from ..evaluation.prompted import markdown_table
    from ..training.finetune import FinetuneConfig, finetune

    _logging()
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)}
    fields["train"] = tuple(fields["train"])
    cfg = FinetuneConfig(**fields)
    summary = finetune(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        data = summary["data"]
        print(
            f"data: {data['train_images']} training images ({data['train_entries']} with "
            f"views), {data['val_images']} val images, {data['instances']} instances"
            + (f"; skipped: {data['skipped']}" if data["skipped"] else "")
        )
        print(
            f"{summary['steps']} steps ({summary['steps_this_run']} this run, "
            f"{summary['seconds']} s); loss {summary['first_loss']} → {summary['last_loss']}"
        )
        scores = summary.get("eval") or {}
        if scores.get("before") and scores.get("after"):
            print("val mIoU against the ground truth:")
            print(markdown_table(scores["before"], scores["after"]), end="")
        print(f"wrote {summary.get('checkpoint', os.path.join(args.out, 'last.pt'))}")
    return 0


@contextmanager
def _config_parsers(sub: argparse._SubParsersAction) -> Iterator[None]:
    """Make ``sub`` create :class:`ConfigFileParser` s for a while: a top-level command with
    a ``--config`` table (the ``distill`` steps get theirs from their group)."""
    saved: Any = sub._parser_class
    sub._parser_class = ConfigFileParser
    try:
        yield
    finally:
        sub._parser_class = saved


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``finetune``: one flag per :class:`~mobilesam.training.finetune.FinetuneConfig` field
    (its destination is the field's name, its default the field's default)."""
    from ..training.finetune import FinetuneConfig

    d = FinetuneConfig(out="", checkpoint="")
    with _config_parsers(sub):
        p = add_command(sub, "finetune", cmd_finetune, EXAMPLES, config_section="finetune")
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="the checkpoint to fine-tune (official format: SAM or MobileSAM)",
    )
    p.add_argument("--coco", metavar="FILE", help="COCO instances JSON (with --images)")
    p.add_argument("--images", metavar="FOLDER", help="the folder of --coco's file_names")
    p.add_argument("--masks", metavar="DATA", help="a folder holding images/ and masks/")
    add_out_arg(p, None, "run folder (model.pt, last.pt, metrics.jsonl, summary.json)")
    p.add_argument(
        "--train",
        nargs="+",
        default=list(d.train),
        metavar="PART",
        help="what trains besides the mask decoder: prompt_encoder, image_encoder (all of "
        "it) or image_encoder:N (its last N stages and neck)",
    )
    p.add_argument(
        "--img-size",
        type=COUNT1,
        default=d.img_size,
        metavar="PIXELS",
        help="the model's input side (default the checkpoint's, 1024; other sizes, multiples "
        "of 16, for MobileSAM's encoder only: quick experiments)",
    )
    p.add_argument(
        "--val-fraction",
        type=SHARE,
        default=d.val_fraction,
        help=f"share of the images held out for validation (default {d.val_fraction})",
    )
    p.add_argument(
        "--masks-per-image",
        type=COUNT1,
        default=d.masks_per_image,
        metavar="N",
        help=f"instances per image and step (default {d.masks_per_image})",
    )
    p.add_argument(
        "--corrections",
        type=COUNT0,
        default=d.corrections,
        metavar="N",
        help=f"correction rounds after the first prompt (default {d.corrections}; the paper: 10)",
    )
    p.add_argument(
        "--views",
        type=COUNT0,
        default=d.views,
        help="augmented views (flip, crop) per training image (default 0)",
    )
    p.add_argument(
        "--cache",
        metavar="FOLDER",
        default=d.cache,
        help="where the embeddings are cached (default OUT/embeddings)",
    )
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        default=d.evaluate,
        help="do not score the val split before and after",
    )
    p.add_argument(
        "--max-eval-images",
        type=COUNT1,
        default=d.max_eval_images,
        metavar="N",
        help="score at most N val images",
    )
    add_schedule_args(p, d)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_quiet_arg(p)
