"""Folder-job overhead of ``mobilesam everything`` (issue 26): how much of a folder job's wall
time is spent outside ``generate`` (reading photos, painting overlays, writing results,
starting up), and the throughput of several processes under ``torchrun``.

The folder is the issue's: the six reference photos twice (12 photos, in two sub-folders), at
``--points-per-side 16`` with the fixture checkpoint. Each run is the command as a user runs
it, ``python -m mobilesam everything FOLDER ... --quiet`` in a fresh process (or ``python -m
torch.distributed.run --nproc_per_node N -m mobilesam everything ...`` with ``--processes N``)
into an empty output folder. The time inside ``generate`` is the sum of the photos'
``seconds`` (each photo's JSON records it); the rest of the process's wall time is outside it.

``--code PATH`` runs another checkout's ``mobilesam`` (put first on ``PYTHONPATH``), e.g. a
clone of an older commit, for a before/after comparison on the same machine in the same
session. ``--quick``: ``picture1`` and ``picture2`` once at 4 points per side (a smoke test).
It prints a table and writes JSON (``benchmarks/results/folder.json`` unless ``--json``).

Usage: ``python benchmarks/folder.py [--quick] [--repeats 1] [--processes 1] [--no-overlay]
[--threads N] [--device cuda] [--code PATH] [--json PATH]``
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REFERENCE, argument_parser, machine_info, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("picture1.jpg", "picture2.jpg", "picture4.jpg", "picture5.jpg", "picture6.jpg")
PHOTOS += ("picture7.jpg",)
CHECKPOINT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"


def make_folder(root: Path, quick: bool) -> Path:
    """The photos to segment under ``root/photos``: the six reference photos in ``a/`` and
    again in ``b/`` (``quick``: picture1 and picture2 in ``a/``)."""
    folder = root / "photos"
    for sub in ("a",) if quick else ("a", "b"):
        (folder / sub).mkdir(parents=True)
        for name in PHOTOS[:2] if quick else PHOTOS:
            shutil.copyfile(REFERENCE / "images" / name, folder / sub / name)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(args, folder: Path, out: Path, env: dict[str, str]) -> dict[str, float]:  # noqa: ANN001
    """One run of the command into the empty ``out``: wall seconds, seconds in ``generate``,
    photos and masks."""
    pps = "4" if args.quick else str(args.points_per_side)
    command = [sys.executable]
    if args.processes > 1:
        command += ["-m", "torch.distributed.run", "--nproc_per_node", str(args.processes)]
        command += ["--master_port", str(_free_port())]
    command += ["-m", "mobilesam", "everything", str(folder), "--checkpoint", str(CHECKPOINT)]
    command += ["--points-per-side", pps, "--out", str(out), "--quiet"]
    command += ["--no-overlay"] if args.no_overlay else []
    command += ["--device", args.device] if args.device else []
    start = time.perf_counter()
    res = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"the command failed ({res.returncode}):\n{res.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    records = [r for r in records if "annotations" in r]  # not the torchrun summary
    inside = sum(r["seconds"] for r in records)
    return {
        "wall_s": wall,
        "generate_s": inside,
        "photos": len(records),
        "masks": sum(len(r["annotations"]) for r in records),
    }


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="2 photos at 4 points per side")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1, help="torchrun processes (default 1)")
    ap.add_argument("--no-overlay", action="store_true", help="pass --no-overlay")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each process")
    ap.add_argument("--device", help="pass --device (default: the command's, auto)")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose mobilesam runs")
    ap.add_argument("--json", help="output file (default benchmarks/results/folder.json)")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join([args.code, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    used = subprocess.run(
        [sys.executable, "-c", "import mobilesam; print(mobilesam.__file__)"],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
    ).stdout.strip()  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="mobilesam-folder-") as tmp:
        folder = make_folder(Path(tmp), args.quick)
        for i in range(args.repeats):
            runs.append(run_once(args, folder, Path(tmp) / f"out{i}", env))
    wall = statistics.median(r["wall_s"] for r in runs)
    inside = statistics.median(r["generate_s"] for r in runs)
    photos, masks = runs[0]["photos"], runs[0]["masks"]
    result = {
        "code": used,
        "processes": args.processes,
        "points_per_side": 4 if args.quick else args.points_per_side,
        "overlay": not args.no_overlay,
        "device": args.device or "auto",
        "photos": photos,
        "masks": masks,
        "wall_s": wall,
        "generate_s": inside,
        "outside_s": wall - inside,
        "outside_share": (wall - inside) / wall,
        "photos_per_s": photos / wall,
        "runs": runs,
        "machine": machine_info(),
    }
    rows = [
        ("wall time (s)", f"{wall:.2f}"),
        (
            "inside generate (s)",
            f"{inside:.2f}"
            + (f" (sum over {args.processes} processes)" if args.processes > 1 else ""),
        ),
        ("outside generate (s)", f"{wall - inside:.2f}" if args.processes == 1 else "n/a"),
        ("share outside", f"{(wall - inside) / wall:.1%}" if args.processes == 1 else "n/a"),
        ("photos / s", f"{photos / wall:.3f}"),
        ("photos, masks", f"{photos}, {masks}"),
    ]
    print(f"mobilesam everything on {photos} photos; code: {used}; {args.processes} process(es)")
    print_table(rows, ("measure", "value"))
    print(f"wrote {write_json('folder', result, args.json)}")


if __name__ == "__main__":
    main()
