"""``mobilesam distill cache|train``: decoupled distillation of a light image encoder."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    add_command,
    add_group,
    add_out_arg,
    add_quiet_arg,
    number_at_least,
)
from .config import ConfigFileParser

if TYPE_CHECKING:
    from ..training.train import TrainConfig

DOC = """\
Distill a light image encoder from a SAM teacher (the MobileSAM paper's decoupled
distillation).

Two steps: "distill cache" runs the teacher's image encoder once per image and stores the
embeddings, then "distill train" trains the student encoder to reproduce them, keeping the
teacher's prompt encoder and mask decoder. Each step takes its options from the command
line or from a TOML file (--config, the [cache] and [train] tables), and runs on one
process or under torchrun on several.
"""

CACHE_EXAMPLES = """
mobilesam distill cache --teacher vit_h --checkpoint sam_vit_h_4b8939.pth \\
    --data /data/sa1b/ --fraction 0.01 --out cache/
mobilesam distill cache --config configs/mobilesam_sa1b.toml
"""

TRAIN_EXAMPLES = """
mobilesam distill train --cache cache/ --student vit_t \\
    --teacher-checkpoint sam_vit_h_4b8939.pth --out run/ --epochs 8 --batch-size 8
torchrun --nproc_per_node 8 -m mobilesam distill train --config configs/mobilesam_sa1b.toml
mobilesam distill train --cache cache/ --student vit_t_small --teacher-checkpoint t.pth \\
    --out run/ --resume
"""

#: Argument types of the counts and shares (usage errors, exit 2, before any work).
COUNT0, COUNT1 = number_at_least(0), number_at_least(1)


def finite(minimum: float, maximum: float = math.inf, positive: bool = False) -> Callable:
    """Argument type: a finite float in ``[minimum, maximum]`` (above ``minimum`` with
    ``positive``)."""
    base = number_at_least(minimum, float, None if math.isinf(maximum) else maximum)

    def parse(text: str) -> float:
        value = base(text)
        if positive and value <= minimum:
            raise argparse.ArgumentTypeError(f"must be more than {minimum:g}, got {text}")
        return value

    return parse


SHARE = finite(0.0, 1.0)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def cmd_cache(args: argparse.Namespace) -> int:
    """Run the teacher's image encoder once per image and store its embeddings.

    The images come from folders, image files and SA-1B sa_*.tar shards (read in place);
    --fraction, --split and --val-fraction pick a reproducible subset. The embeddings are
    written in shards to the --out folder with a manifest that records the teacher
    checkpoint's sha256 and each image's; a rerun computes only the missing shards, and
    under torchrun the ranks share the shards. Unreadable images are skipped and counted.
    """
    from ..build import build_sam
    from ..hub import sha256_file
    from ..training.cache import CacheConfig, build_cache
    from ..training.data import collect_image_refs, select
    from ..training.distributed import setup_distributed

    _logging()
    rank, world, device = setup_distributed(args.device)
    refs = select(
        collect_image_refs(args.data), args.fraction, args.split, args.val_fraction, args.seed
    )
    if not refs:
        raise ValueError(f"no images selected from {' '.join(args.data)} (see --fraction)")
    teacher = build_sam(args.checkpoint, model_type=args.teacher).to(device)
    cfg = CacheConfig(
        shard_size=args.shard_size, dtype=args.dtype, views=args.views, seed=args.seed
    )
    manifest = build_cache(
        teacher,
        refs,
        args.out,
        cfg,
        teacher_name=args.teacher or Path(args.checkpoint).stem,
        teacher_sha256=sha256_file(args.checkpoint),
        rank=rank,
        world=world,
        progress=not args.quiet,
    )
    if manifest is not None:
        skipped = sum(len(s["unreadable"]) for s in manifest["shards"])
        print(
            f"cache {args.out}: {manifest['n_entries']} embeddings of {len(refs)} images in "
            f"{len(manifest['shards'])} shards"
            + (f"; {skipped} unreadable skipped" if skipped else "")
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the student image encoder on a teacher cache.

    The student (vit_t, TinyViT-5M, or vit_t_small) learns to reproduce the cached teacher
    embeddings (decoupled mode, the paper's) or, in semi-coupled mode, the teacher's masks
    through its frozen decoder. It writes last.pt (for --resume), metrics.jsonl,
    summary.json and student.pt, an official-format checkpoint with the teacher's prompt
    encoder and mask decoder, to the --out folder. Every option is also a key of the
    --config file's [train] table.
    """
    from ..training.train import TrainConfig, train

    _logging()
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    summary = train(cfg, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{summary['steps']} steps ({summary['steps_this_run']} this run, "
            f"{summary['seconds']} s); loss {summary['first_loss']} → {summary['last_loss']}; "
            f"wrote {summary.get('checkpoint', Path(args.out) / 'last.pt')}"
        )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    examples = CACHE_EXAMPLES + TRAIN_EXAMPLES
    steps = add_group(sub, "distill", DOC, examples, "STEP", parser_class=ConfigFileParser)
    add_cache_parser(steps)
    add_train_parser(steps)


def add_cache_parser(steps: argparse._SubParsersAction) -> None:
    c = add_command(steps, "cache", cmd_cache, CACHE_EXAMPLES, config_section="cache")
    c.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="teacher checkpoint (official format)"
    )
    c.add_argument(
        "--teacher",
        help="teacher architecture (vit_h, vit_l, vit_b, vit_t; default: read from the checkpoint)",
    )
    c.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="image folders, images or SA-1B sa_*.tar shards",
    )
    add_out_arg(c, None, "cache folder")
    c.add_argument(
        "--fraction", type=SHARE, default=1.0, help="subset, e.g. 0.01 = 1%% (default 1)"
    )
    c.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "all"],
        help="which side of the --val-fraction split to cache (default train)",
    )
    c.add_argument(
        "--val-fraction",
        type=SHARE,
        default=0.0,
        help="share held out as the val split (default 0)",
    )
    c.add_argument("--views", type=COUNT0, default=0, help="augmented views per image (default 0)")
    c.add_argument("--shard-size", type=COUNT1, default=64, help="images per shard (default 64)")
    c.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="embedding storage type (default float16)",
    )
    c.add_argument("--seed", type=int, default=0, help="subset and augmentation seed (default 0)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    add_quiet_arg(c)


def add_train_parser(steps: argparse._SubParsersAction) -> None:
    """``distill train``: one flag per :class:`~mobilesam.training.train.TrainConfig` field
    (its destination is the field's name, its default the field's default)."""
    from ..training.train import TrainConfig

    d = TrainConfig(cache="", out="", teacher_checkpoint="")
    t = add_command(steps, "train", cmd_train, TRAIN_EXAMPLES, config_section="train")
    t.add_argument(
        "--cache", required=True, metavar="FOLDER", help='cache folder made by "distill cache"'
    )
    t.add_argument(
        "--teacher-checkpoint",
        required=True,
        metavar="PATH",
        help="teacher checkpoint: the source of the prompt encoder and mask decoder",
    )
    add_out_arg(t, None, "run folder (last.pt, metrics.jsonl, summary.json, student.pt)")
    t.add_argument("--student", default=d.student, help="vit_t (TinyViT-5M) or vit_t_small")
    t.add_argument(
        "--mode",
        default=d.mode,
        choices=["decoupled", "semi-coupled"],
        help="decoupled: embedding MSE (the paper's); semi-coupled: mask loss through the "
        "teacher's frozen decoder (the ablation)",
    )
    t.add_argument(
        "--mask-points", type=COUNT1, default=d.mask_points, help="semi-coupled: prompts per image"
    )
    t.add_argument(
        "--finetune-decoder",
        "--finetune-decoder-steps",
        dest="finetune_decoder_steps",
        type=COUNT0,
        default=d.finetune_decoder_steps,
        metavar="STEPS",
        help="optional second stage: fine-tune the mask decoder for STEPS steps on the frozen "
        "student (default 0: off)",
    )
    t.add_argument(
        "--allow-stale-cache",
        action="store_true",
        default=d.allow_stale_cache,
        help="train even if images changed since they were cached (by default refused)",
    )
    add_schedule_args(t, d)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    add_quiet_arg(t)


def add_schedule_args(t: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The optimisation and run options of ``distill train``, defaults from ``d`` (a
    TrainConfig)."""
    t.add_argument("--epochs", type=COUNT1, default=d.epochs, help=f"(default {d.epochs})")
    t.add_argument("--batch-size", type=COUNT1, default=d.batch_size, help="per process")
    t.add_argument("--lr", type=finite(0.0, positive=True), default=d.lr, help="peak learning rate")
    t.add_argument("--weight-decay", type=finite(0.0), default=d.weight_decay, help="AdamW's")
    t.add_argument(
        "--warmup-steps", type=COUNT0, default=d.warmup_steps, help="default: 5%% of all steps"
    )
    t.add_argument(
        "--min-lr-ratio",
        type=SHARE,
        default=d.min_lr_ratio,
        help="the cosine decay ends at lr × this",
    )
    t.add_argument(
        "--clip-grad",
        type=finite(0.0, positive=True),
        default=d.clip_grad,
        help="gradient norm limit",
    )
    t.add_argument("--save-every", type=COUNT1, default=d.save_every, help="steps between last.pt")
    t.add_argument("--seed", type=int, default=d.seed, help="data order and init seed")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    t.add_argument("--num-workers", type=COUNT0, default=d.num_workers, help="DataLoader workers")
    t.add_argument("--max-steps", type=COUNT1, default=d.max_steps, help="stop after this many")
