"""``mobilesam distill cache|train``: decoupled distillation of a light image encoder."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  mobilesam distill cache --teacher vit_h --checkpoint sam_vit_h_4b8939.pth \\
      --data /data/sa1b/ --fraction 0.01 --out cache/
  mobilesam distill train --cache cache/ --student vit_t \\
      --teacher-checkpoint sam_vit_h_4b8939.pth --out run/ --epochs 8 --batch-size 8
  torchrun --nproc_per_node 8 -m mobilesam distill train --config configs/mobilesam_sa1b.toml
  mobilesam distill train --cache cache/ --student vit_t_small --teacher-checkpoint t.pth \\
      --out run/ --resume
"""


def _load_config(path: str | None, section: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ValueError("--config needs Python 3.11+ (tomllib)") from None
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {k.replace("-", "_"): v for k, v in data.get(section, {}).items()}


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def cmd_cache(args: argparse.Namespace) -> int:
    from ..build import build_sam
    from ..hub import sha256_file
    from ..training.cache import CacheConfig, build_cache
    from ..training.data import collect_images, select
    from ..training.distributed import setup_distributed

    _logging()
    if not args.data or not args.out or not args.checkpoint:
        raise ValueError("distill cache needs --checkpoint, --data and --out (or --config)")
    rank, world, device = setup_distributed(args.device)
    teacher = build_sam(args.checkpoint, model_type=args.teacher).to(device)
    refs = select(
        collect_images(args.data), args.fraction, args.split, args.val_fraction, args.seed
    )
    if not refs:
        raise ValueError("no images selected (check --data and --fraction)")
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
    from ..training.train import TrainConfig, train

    _logging()
    for need in ("cache", "out", "teacher_checkpoint"):
        if not getattr(args, need):
            raise ValueError(f"distill train needs --{need.replace('_', '-')} (or --config)")
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
    p = sub.add_parser(
        "distill",
        help="decoupled distillation: teacher cache, student training",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="distill_command", required=True, metavar="STEP")

    c = dsub.add_parser(
        "cache",
        help="run the teacher once per image and store its embeddings",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--config", help="TOML file; its [cache] table sets defaults")
    c.add_argument(
        "--teacher",
        help="teacher architecture (vit_h, vit_l, vit_b, vit_t); "
        "default: detected from the checkpoint",
    )
    c.add_argument("--checkpoint", help="teacher checkpoint (official format)")
    c.add_argument("--data", nargs="+", help="image folders, images or SA-1B sa_*.tar shards")
    c.add_argument("--out", help="cache directory")
    c.add_argument("--fraction", type=float, default=1.0, help="subset, e.g. 0.01 = 1%%")
    c.add_argument("--split", default="train", choices=["train", "val", "all"])
    c.add_argument("--val-fraction", type=float, default=0.0)
    c.add_argument("--views", type=int, default=0, help="augmented views per image")
    c.add_argument("--shard-size", type=int, default=64)
    c.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="auto")
    c.set_defaults(func=cmd_cache, _section="cache")

    from ..training.train import TrainConfig

    # every TrainConfig field has a flag (dest = field name); the defaults are TrainConfig's
    d = TrainConfig(cache="", out="", teacher_checkpoint="")
    t = dsub.add_parser(
        "train",
        help="train the student encoder on the cache",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", help="TOML file; its [train] table sets defaults")
    t.add_argument("--cache", help="cache directory from `distill cache`")
    t.add_argument("--out", help="run directory (last.pt, metrics.jsonl, student.pt)")
    t.add_argument("--teacher-checkpoint", help="source of the prompt encoder and mask decoder")
    t.add_argument("--student", default=d.student, help="vit_t (TinyViT-5M) or vit_t_small")
    t.add_argument(
        "--mode",
        default=d.mode,
        choices=["decoupled", "semi-coupled"],
        help="decoupled: embedding MSE (the paper's); semi-coupled: mask loss through the "
        "teacher's frozen decoder (the ablation)",
    )
    t.add_argument(
        "--mask-points", type=int, default=d.mask_points, help="semi-coupled: prompts per image"
    )
    t.add_argument(
        "--finetune-decoder",
        "--finetune-decoder-steps",
        dest="finetune_decoder_steps",
        type=int,
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
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help="default: 5%% of all steps"
    )
    t.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help="the cosine decay ends at lr × this",
    )
    t.add_argument("--clip-grad", type=float, default=d.clip_grad)
    t.add_argument("--save-every", type=int, default=d.save_every)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    t.add_argument("--num-workers", type=int, default=d.num_workers)
    t.add_argument("--max-steps", type=int, default=d.max_steps)
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train, _section="train")


def apply_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then re-parse with the ``--config`` table as defaults (flags still win)."""
    args = parser.parse_args(argv)
    section = getattr(args, "_section", None)
    if section and getattr(args, "config", None):
        defaults = _load_config(args.config, section)
        sub = _find_subparser(parser, ["distill", args.distill_command])
        known = {a.dest: a.dest for a in sub._actions}  # keys: dests, or long flag names
        for a in sub._actions:
            for opt in a.option_strings:
                if opt.startswith("--"):
                    known.setdefault(opt[2:].replace("-", "_"), a.dest)
        unknown = set(defaults) - set(known)
        if unknown:
            raise ValueError(f"{args.config} [{section}]: unknown keys {sorted(unknown)}")
        sub.set_defaults(**{known[k]: v for k, v in defaults.items()})
        args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    return args


def _find_subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser
