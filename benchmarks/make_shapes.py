"""Write the synthetic shapes dataset (COCO instances): ellipses, polygons, stars and rings
with textures over crops of real photos, several per image, occluding one another.

The generator is ``tests/shapes.py`` (the fine-tuning tests use it too); this is its
command line. Usage: ``python benchmarks/make_shapes.py OUT [--images 64] [--size 256]
[--seed 0]`` writes ``OUT/images/*.png`` and ``OUT/annotations.json``. With the ``bench``
extra (scikit-image) its sample photos join the reference photos as backgrounds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import argument_parser  # noqa: E402

from tests.shapes import make_shapes  # noqa: E402


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("out", help="the dataset folder to write")
    ap.add_argument("--images", type=int, default=64, help="how many images (default 64)")
    ap.add_argument("--size", type=int, default=256, help="their side in pixels (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = make_shapes(args.out, args.images, args.size, args.seed)
    doc = json.loads(path.read_text())
    print(f"wrote {path}: {len(doc['images'])} images, {len(doc['annotations'])} instances")


if __name__ == "__main__":
    main()
