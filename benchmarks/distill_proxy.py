"""The paper's claim in kind, on this CPU: an encoder trained only to match the teacher's
embeddings (decoupled distillation) fits the teacher's frozen decoder.

- Teacher: ``../shared/reference/checkpoints/distill_teacher.pt`` (masks depend on prompt and
  image content).
- Student: a smaller TinyViT (``vit_t_small``) from random weights.
- Training data: the reference photos except ``picture1.jpg`` and ``picture4.jpg``, plus
  scikit-image's sample images, each with random flips and crops (cached views).
- Held out: ``picture1.jpg`` and ``picture4.jpg``.

Reports the student-vs-teacher mIoU on the held-out photos (point and box prompts) before,
during and after training, beside two floors measured in the same run: a pure-noise
embedding and another photo's embedding. Writes a table, a JSON and a plot.

Usage: ``python benchmarks/distill_proxy.py [--minutes 20] [--views 6] [--json PATH]``
(needs ``pip install -e ".[bench,eval]"``: scikit-image, matplotlib).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    RESULTS,
    argument_parser,
    machine_info,
    print_table,
    write_json,
)

from mobilesam import SamPredictor, build_sam  # noqa: E402
from mobilesam.build import build_image_encoder  # noqa: E402
from mobilesam.evaluation.miou import Scores, score_image  # noqa: E402
from mobilesam.image_io import read_rgb  # noqa: E402
from mobilesam.training.cache import CacheConfig, CacheReader, build_cache  # noqa: E402
from mobilesam.training.data import collect_image_refs  # noqa: E402
from mobilesam.training.train import STUDENT_PRESETS, TrainConfig, train  # noqa: E402
from mobilesam.transforms import to_rgb_uint8  # noqa: E402

TEACHER = REFERENCE / "checkpoints" / "distill_teacher.pt"
HELD_OUT = ("picture1.jpg", "picture4.jpg")


def write_corpus(root: Path) -> None:
    """Training photos: reference images minus the held-out ones, plus skimage's samples."""
    import skimage.data as skd

    root.mkdir(parents=True)
    for p in sorted((REFERENCE / "images").glob("*.jpg")):
        if p.name not in HELD_OUT:
            (root / p.name).write_bytes(p.read_bytes())
    for name in sorted(n for n in dir(skd) if not n.startswith("_")):
        fn = getattr(skd, name)
        if not callable(fn) or name in ("download_all", "data_dir", "lbp_frontal_face"):
            continue
        try:
            arr = np.asarray(fn())
        except Exception:  # noqa: BLE001 - some need downloads or extra packages
            continue
        if (
            arr.ndim not in (2, 3)
            or min(arr.shape[:2]) < 64
            or (arr.ndim == 3 and arr.shape[2] > 4)
        ):
            continue
        try:
            Image.fromarray(to_rgb_uint8(arr)).save(root / f"skimage_{name}.png")
        except ValueError:
            continue


def teacher_embeddings(teacher, held: dict) -> dict:
    """The teacher's embedding of each held-out photo, computed once."""
    pred = SamPredictor(teacher)
    out = {}
    for name, image in held.items():
        pred.set_image(image)
        out[name] = pred.get_image_embedding()
    return out


def evaluate(
    student_model,
    teacher,
    held: dict,
    embeddings: dict,
    n: int,
    floors: bool = False,
) -> dict:
    """mIoU against the teacher of ``student_model`` (the teacher's decoder on a student
    encoder; ``None`` to skip) and, with ``floors``, of the teacher's decoder on a noise
    embedding and on the other photo's embedding."""
    ref, pred = SamPredictor(teacher), SamPredictor(teacher)
    student = SamPredictor(student_model) if student_model is not None else None
    rows = {}
    variants = ["student"] if student is not None else []
    if floors:
        variants += ["noise embedding", "other photo's embedding"]
    for variant in variants:
        total = Scores()
        for i, (name, image) in enumerate(held.items()):
            size = image.shape[:2]
            ref.set_embedding(embeddings[name], size)
            if variant == "student":
                assert student is not None
                student.set_image(image)
                model = student
            else:
                if variant == "noise embedding":
                    g = torch.Generator().manual_seed(i)
                    features = torch.randn(embeddings[name].shape, generator=g)
                else:
                    features = embeddings[HELD_OUT[1 - HELD_OUT.index(name)]]
                pred.set_embedding(features, size)
                model = pred
            total.merge(score_image(model, ref, n, ("point", "box"), seed=100 + i))
        rows[variant] = {k: v["miou"] for k, v in total.summary().items()}
    return rows


def build_student_sam(student: str, state_dict: dict):
    """The teacher (its prompt encoder and mask decoder) on a student encoder."""
    model = build_sam(TEACHER)
    model.image_encoder = build_image_encoder(STUDENT_PRESETS[student])
    model.image_encoder.load_state_dict(state_dict)
    return model.eval()


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-time budget")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--student", default="vit_t_small")
    ap.add_argument("--mode", default="decoupled", choices=["decoupled", "semi-coupled"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prompts", type=int, default=30, help="per held-out image and kind")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = build_sam(TEACHER)
    held = {n: read_rgb(REFERENCE / "images" / n) for n in HELD_OUT}
    embeddings = teacher_embeddings(teacher, held)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        write_corpus(tmp / "corpus")
        refs = collect_image_refs([str(tmp / "corpus")])
        print(f"{len(refs)} training photos × {1 + args.views} views", flush=True)
        build_cache(
            teacher,
            refs,
            tmp / "cache",
            CacheConfig(shard_size=16, views=args.views),
            teacher_name="distill_teacher",
            progress=False,
        )
        cache_s = time.perf_counter() - t0
        print(f"cache built in {cache_s:.0f} s", flush=True)
        floors = evaluate(None, teacher, held, embeddings, args.prompts, floors=True)
        # time a step to size the run to the budget
        steps_per_epoch = len(CacheReader(tmp / "cache")) // args.batch_size
        probe = TrainConfig(  # same mode: the step time sets the epochs for the budget
            cache=str(tmp / "cache"),
            out=str(tmp / "probe"),
            teacher_checkpoint=str(TEACHER),
            student=args.student,
            batch_size=args.batch_size,
            max_steps=3,
            num_workers=0,
            mode=args.mode,
        )
        s = train(probe, progress=False)
        step_s = s["seconds"] / 3
        epochs = max(1, int(args.minutes * 60 / (step_s * steps_per_epoch)))
        print(f"{step_s:.2f} s/step, {steps_per_epoch} steps/epoch → {epochs} epochs", flush=True)
        cfg = TrainConfig(
            cache=str(tmp / "cache"),
            out=str(tmp / "run"),
            teacher_checkpoint=str(TEACHER),
            student=args.student,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            mode=args.mode,
            save_every=10**9,
            num_workers=0,
        )
        torch.manual_seed(0)
        init = build_image_encoder(STUDENT_PRESETS[args.student]).state_dict()
        model = build_student_sam(args.student, init)
        row = evaluate(model, teacher, held, embeddings, args.prompts)["student"]
        history = [{"epoch": 0, "train_seconds": 0.0, "wall_seconds": 0.0, **row}]
        print(history[-1], flush=True)
        # train_seconds: train()'s own time; wall_seconds also counts the evaluations between
        wall_start, train_s = time.perf_counter(), 0.0
        for e in range(1, epochs + 1):
            run = train(cfg, resume=e > 1, progress=False, stop_after=e * steps_per_epoch)
            train_s += run["seconds"]
            sd = torch.load(tmp / "run" / "last.pt", weights_only=False)["student"]
            model.image_encoder.load_state_dict(sd)
            row = evaluate(model, teacher, held, embeddings, args.prompts)["student"]
            history.append(
                {
                    "epoch": e,
                    "train_seconds": round(train_s, 1),
                    "wall_seconds": round(time.perf_counter() - wall_start, 1),
                    **row,
                }
            )
            print(history[-1], flush=True)
        losses = [
            json.loads(x)["loss"] for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()
        ]
    final = history[-1]
    rows = [("student, start (random)", f"{history[0]['point']:.3f}", f"{history[0]['box']:.3f}")]
    rows += [
        (
            f"student, epoch {h['epoch']} ({h['train_seconds']:.0f} s training)",
            f"{h['point']:.3f}",
            f"{h['box']:.3f}",
        )
        for h in history[1:]
    ]
    rows += [(f"floor: {k}", f"{v['point']:.3f}", f"{v['box']:.3f}") for k, v in floors.items()]
    print_table(rows, ("held-out picture1 + picture4", "mIoU point", "mIoU box"))
    goal = "met" if final["point"] >= 0.90 else "not met"
    print(f"goal mIoU ≥ 0.90 (point prompts): {goal}; total {time.perf_counter() - t0:.0f} s")
    plot = RESULTS / f"distill_proxy_{args.mode}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [h["train_seconds"] / 60 for h in history]
    ax.plot(xs, [h["point"] for h in history], "o-", label="student, point prompts")
    ax.plot(xs, [h["box"] for h in history], "s-", label="student, box prompts")
    for (k, v), style in zip(floors.items(), (":", "--"), strict=True):
        ax.axhline(v["point"], color="gray", ls=style, label=f"floor: {k} (point)")
    ax.set_xlabel("training minutes (2 CPU threads)")
    ax.set_ylabel("mIoU vs teacher (held out)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    out = {
        "machine": machine_info(),
        "student": args.student,
        "views": args.views,
        "train_photos": len(refs),
        "epochs": epochs,
        "seconds_per_step": step_s,
        "cache_seconds": cache_s,
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - t0,
        "history": history,
        "floors": floors,
        "loss_first_last": [losses[0], losses[-1]],
        "plot": str(plot),
    }
    out["mode"] = args.mode
    print(f"plot: {plot}\njson: {write_json(f'distill_proxy_{args.mode}', out, args.json)}")


if __name__ == "__main__":
    main()
