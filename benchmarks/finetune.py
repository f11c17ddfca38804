"""Fine-tuning learns: the fixture checkpoint's decoder, fine-tuned on the synthetic shapes
(``benchmarks/make_shapes.py``), against the ground truth of held-out images.

Makes the dataset, runs ``mobilesam.training.finetune.finetune`` (decoder only, on cached
embeddings, SAM's recipe), and prints the val mIoU per prompt kind (box, centre point,
point + correction click) and the box AP, before and after. Writes a JSON
(``benchmarks/results/finetune.json``) and a picture: for a few val images, the ground truth,
then the fixture's and the fine-tuned model's masks for the same box and point prompts.

Usage: ``python benchmarks/finetune.py [--steps 1000] [--images 96] [--quick]``.
``--quick`` is a short run that checks the script works (its figures mean little).
The fixture's decoder gives decisive logits (±1000). The fine-tuning first brings them down
(for about 100 steps its masks get worse), then the masks follow the shapes: measured on
128-pixel inputs, lr 5e-4 (also 2e-4 to 1e-3) with 30 warm-up steps rose steadily from
step ~125.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import (  # noqa: E402
    REFERENCE,
    argument_parser,
    machine_info,
    print_table,
    write_json,
)

from mobilesam import SamPredictor  # noqa: E402
from mobilesam.evaluation.prompted import KINDS, center_point  # noqa: E402
from mobilesam.image_io import read_rgb  # noqa: E402
from mobilesam.training.data import select  # noqa: E402
from mobilesam.training.finetune import FinetuneConfig, finetune, load_model  # noqa: E402
from mobilesam.training.instances import read_coco  # noqa: E402
from tests.shapes import make_shapes  # noqa: E402

FIXTURE = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
          (145, 30, 180), (70, 240, 240), (240, 50, 230)]  # fmt: skip


def overlay(image: np.ndarray, masks: list[np.ndarray], marks: list) -> Image.Image:
    """``image`` with each mask tinted in its colour, and its prompt drawn (a box
    ``(x0, y0, x1, y1)`` or a point ``(x, y)``)."""
    out = image.astype(np.float32)
    for k, m in enumerate(masks):
        out[m] = 0.45 * out[m] + 0.55 * np.array(COLORS[k % len(COLORS)])
    im = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for k, mark in enumerate(marks):
        color = COLORS[k % len(COLORS)]
        if len(mark) == 4:
            draw.rectangle(list(mark), outline=color, width=2)
        elif len(mark) == 2:
            x, y = mark
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(255, 255, 255), outline=color)
    return im


def picture(images: list, model: Path, img_size: int, path: Path) -> None:
    """Rows of ``images`` (:class:`~mobilesam.training.instances.InstanceImage`): ground
    truth | fixture, boxes | fine-tuned, boxes | fixture, points | fine-tuned, points."""
    models = {
        "fixture": SamPredictor(load_model(FIXTURE, img_size)),
        "fine-tuned": SamPredictor(load_model(model, img_size)),
    }
    rows = []
    for im in images:
        rgb, gt = read_rgb(im.ref.path), im.decode()
        boxes = []
        points = []
        for m in gt:
            ys, xs = np.nonzero(m)
            boxes.append(np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64))
            points.append(center_point(m))
        tiles = [overlay(rgb, list(gt), [])]
        for kind in ("box", "point"):
            for pred in models.values():
                pred.set_image(rgb)
                masks = []
                for b, p in zip(boxes, points, strict=True):
                    if kind == "box":
                        masks.append(pred.predict(box=b, multimask_output=False)[0][0])
                    else:
                        ms, sc, _ = pred.predict(point_coords=p[None], point_labels=np.array([1]))
                        masks.append(ms[int(np.argmax(sc))])
                tiles.append(overlay(rgb, masks, boxes if kind == "box" else points))
        rows.append(tiles)
    w, h = rows[0][0].size
    head = 18
    sheet = Image.new("RGB", (w * 5, head + h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    titles = ["ground truth", "fixture: boxes", "fine-tuned: boxes", "fixture: points",
              "fine-tuned: points"]  # fmt: skip
    for c, title in enumerate(titles):
        draw.text((c * w + 4, 3), title, fill=(0, 0, 0))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * w, head + r * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--images", type=int, default=96, help="dataset size (default 96)")
    ap.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ap.add_argument("--img-size", type=int, default=256, help="model input side (default 256)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--masks-per-image", type=int, default=4)
    ap.add_argument("--corrections", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a short run: 16 images, 30 steps")
    ap.add_argument("--out", help="run folder (default: a temporary one)")
    ap.add_argument("--picture", default=str(ROOT / "docs" / "finetune_shapes.png"))
    ap.add_argument("--json", help="output path (default benchmarks/results/finetune.json)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.steps = 16, 30
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes(Path(tmp) / "shapes", args.images, args.size, seed=0).parent
        run = Path(args.out) if args.out else Path(tmp) / "run"
        cfg = FinetuneConfig(
            out=str(run),
            checkpoint=str(FIXTURE),
            coco=str(data / "annotations.json"),
            images=str(data / "images"),
            img_size=args.img_size,
            val_fraction=0.25,
            masks_per_image=args.masks_per_image,
            corrections=args.corrections,
            epochs=10_000,
            max_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=min(30, args.steps),
            save_every=max(50, args.steps // 10),
        )
        start = time.perf_counter()
        summary = finetune(cfg, progress=True)
        wall = time.perf_counter() - start
        before, after = summary["eval"]["before"], summary["eval"]["after"]
        rows = [
            (k, f"{before[k]['miou']:.3f}", f"{after[k]['miou']:.3f}",
             f"{after[k]['miou'] - before[k]['miou']:+.3f}", str(after[k]["n"]))
            for k in KINDS
        ]  # fmt: skip
        rows.append(
            ("box AP", f"{before['box_ap']['AP']:.3f}", f"{after['box_ap']['AP']:.3f}",
             f"{after['box_ap']['AP'] - before['box_ap']['AP']:+.3f}", "")
        )  # fmt: skip
        print(
            f"\n{summary['data']['train_images']} training and {summary['data']['val_images']} "
            f"val images, {summary['steps']} steps in {summary['seconds']:.0f} s "
            f"({wall:.0f} s with the cache and the evaluations)"
        )
        print_table(rows, ("val mIoU vs ground truth", "fixture", "fine-tuned", "change", "n"))
        images = read_coco(data / "annotations.json", data / "images", warn=False).images
        val = {r.key for r in select([im.ref for im in images], 1.0, "val", 0.25, cfg.seed)}
        shown = [im for im in images if im.ref.key in val][:3]
        picture(shown, run / "model.pt", args.img_size, Path(args.picture))
        print(f"wrote {args.picture}")
        out = write_json(
            "finetune",
            {
                "machine": machine_info(),
                "settings": {k: v for k, v in vars(args).items() if k not in ("out", "json")},
                "summary": summary,
                "wall_seconds": round(wall, 1),
            },
            args.json,
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
