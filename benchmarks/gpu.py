"""The prepared GPU check: this project beside the official MobileSAM code on one GPU, in one
run, the two sides interleaved round by round and every timing between two
``torch.cuda.synchronize()`` calls.

Steps, each reported as a table row and in the JSON (default ``benchmarks/results/gpu.json``):

1. ``parity``: the golden prompt cases of ``../shared/reference`` (official outputs, CPU,
   fp32) on the device, in fp32, bf16 and fp16: mean and worst mask IoU (goal: mean ≥ 0.99);
   the official code in fp32 on the same device beside it;
2. ``encoder``: encoder latency at batch 1 in fp32, bf16 and fp16 (reduced precisions as
   ``torch.autocast``, for the official code too);
3. ``throughput``: encoder images/s at batch 8 and 32, against the official code at the same
   batch and at batch 1 (the issue's goal: ≥ 3× the official batch-1 figure), and
   ``set_image_batch`` against a loop of the official ``set_image`` (resize included);
4. ``predict``: ``predict`` latency, one point, multimask;
5. ``everything``: segment everything on ``picture1`` at the default settings (32×32
   points), its mask count and how many masks match the official's one to one (IoU ≥ 0.99);
6. ``memory``: the peak GPU memory of every figure above (``torch.cuda.max_memory_allocated``
   around one extra call).

A step that fails is reported with its error and the others still run; the JSON is rewritten
after every step (an interrupted run keeps what it measured) and the exit code is 1 when any
step failed. A GPU run takes 2-4 minutes.

Without CUDA it says so and runs the same steps on the CPU with tiny repeat counts (a dry run,
``--device cpu --quick``: one image, batch 2 instead of 8 and 32, a 4×4 grid, one timed round,
fp32 and the encoder in bf16 too; fp16 is left out, CPUs run it ~100× slower), in about a
minute on 2 quiet cores, and exits 0.

Usage: ``python benchmarks/gpu.py [--device cuda:0] [--quick] [--json PATH] [--official PATH]``
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    add_official_argument,
    argument_parser,
    import_official,
    machine_info,
    official_model,
    print_table,
    write_json,
)

from mobilesam import SamAutomaticMaskGenerator, SamPredictor, build_sam  # noqa: E402
from mobilesam.device import resolve_device  # noqa: E402
from mobilesam.evaluation.miou import mask_iou  # noqa: E402
from mobilesam.precision import PRECISIONS  # noqa: E402
from mobilesam.transforms import resize_to_input  # noqa: E402

CKPT = REFERENCE / "checkpoints" / "mobile_sam_fixture.pt"
POINT, LABEL = np.array([[400.0, 380.0]]), np.array([1])
PROMPT_CASES = ("one_point_multimask", "three_points_pos_neg", "box", "box_and_point")
#: mean mask IoU against the official outputs that counts as parity
PARITY_MIN = 0.99


@dataclass(frozen=True)
class Plan:
    """Repeat counts and sizes: the full GPU run, or the quick dry run."""

    images: tuple[str, ...] = ("picture1.jpg", "picture4.jpg")
    #: this project's precisions in each step (the official code: fp32, and in the encoder
    #: steps the same reduced precisions under autocast)
    parity_precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    encoder_precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    throughput_precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    predict_precisions: tuple[str, ...] = ("fp32", "bf16")
    everything_precisions: tuple[str, ...] = ("fp32", "bf16")
    encoder_rounds: int = 20
    batches: tuple[int, ...] = (8, 32)
    batch_rounds: int = 5
    predict_rounds: int = 20
    predict_inner: int = 5
    points_per_side: int = 32
    everything_rounds: int = 3
    warmup: int = 2

    @classmethod
    def quick(cls, device: torch.device) -> Plan:
        """A few minutes' worth of work: one image, batch 2, a 4×4 grid, one timed round;
        on a CPU every step in fp32 and the encoder in bf16 too (fp16 runs ~100× slower
        there)."""
        fp32 = ("fp32",)
        return cls(
            images=("picture1.jpg",),
            parity_precisions=fp32,
            encoder_precisions=("fp32", "bf16") if device.type == "cpu" else cls.encoder_precisions,
            throughput_precisions=fp32,
            predict_precisions=fp32,
            everything_precisions=fp32,
            encoder_rounds=1,
            batches=(2,),
            batch_rounds=1,
            predict_rounds=2,
            predict_inner=1,
            points_per_side=4,
            everything_rounds=1,
            warmup=0 if device.type == "cpu" else 1,
        )

    def without(self, precision: str) -> Plan:
        """The plan with ``precision`` left out of every step (a GPU without native bf16)."""
        steps = ("parity", "encoder", "throughput", "predict", "everything")
        return replace(
            self,
            **{
                f"{step}_precisions": tuple(
                    p for p in getattr(self, f"{step}_precisions") if p != precision
                )
                for step in steps
            },
        )


@dataclass
class Run:
    """What every step shares: the device, the plan, the two models and the results so far."""

    device: torch.device
    plan: Plan
    ours: Any
    official: ModuleType | None
    reference: Any  # the official model on the device, or None
    photos: dict[str, np.ndarray]
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def row(self, step: str, figure: str, ours: str, official: str = "-", ratio: str = "-"):
        self.rows.append((step, figure, ours, official, ratio))


# --------------------------------------------------------------------------- timing


def timed(run: Run, fns: dict[str, Callable[[], object]], rounds: int, inner: int = 1):
    """Per-call seconds of each of ``fns``, interleaved round by round after ``plan.warmup``
    untimed rounds, each timing between two device synchronisations; and each function's
    peak GPU memory in MiB (one extra call; None off CUDA)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, float | None] = dict.fromkeys(fns)
    for _ in range(run.plan.warmup):
        for fn in fns.values():
            fn()
        run.sync()
    if run.device.type == "cuda":
        for name, fn in fns.items():
            run.sync()
            torch.cuda.reset_peak_memory_stats(run.device)
            base = torch.cuda.memory_allocated(run.device)
            fn()
            run.sync()
            peaks[name] = (torch.cuda.max_memory_allocated(run.device) - base) / 2**20
    for _ in range(rounds):
        for name, fn in fns.items():
            run.sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            run.sync()
            times[name].append((time.perf_counter() - start) / inner)
    return times, peaks


def figures(times: list[float], peak: float | None) -> dict[str, float | None]:
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "n": len(times),
        "peak_mib": peak,
    }


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The official code in reduced precision, as its users would run it: under autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def ratio(official_ms: float | None, ours_ms: float) -> str:
    return f"{official_ms / ours_ms:.2f}x" if official_ms else "-"


# --------------------------------------------------------------------------- steps


def step_parity(run: Run) -> dict:
    """Golden prompt cases on the device against the official CPU outputs."""
    cases = json.loads((REFERENCE / "golden" / "cases.json").read_text())
    with np.load(REFERENCE / "golden" / "golden.npz") as z:
        golden = {k: z[k] for k in z.files}
    wanted = [
        c for c in cases["cases"] if c.get("name") in PROMPT_CASES and c["image"] in run.plan.images
    ]

    def compare(predictor: Any) -> dict:
        ious, score_diff, emb_diff = [], 0.0, 0.0
        for image in run.plan.images:
            predictor.set_image(run.photos[image])
            img = cases["images"].index(image)
            emb = predictor.get_image_embedding().float().cpu().numpy()
            emb_diff = max(emb_diff, float(np.abs(emb - golden[f"img{img}/embedding"]).max()))
            for case in (c for c in wanted if c["image"] == image):
                masks, iou, _ = predictor.predict(
                    point_coords=np.array(case["point_coords"]) if "point_coords" in case else None,
                    point_labels=np.array(case["point_labels"]) if "point_labels" in case else None,
                    box=np.array(case["box"]) if "box" in case else None,
                    multimask_output=case["multimask_output"],
                )
                expected = golden[f"{case['key']}/masks"]
                ious += [mask_iou(m, g) for m, g in zip(masks, expected, strict=True)]
                score_diff = max(
                    score_diff, float(np.abs(iou - golden[f"{case['key']}/iou"]).max())
                )
        return {
            "mean_mask_iou": float(np.mean(ious)),
            "min_mask_iou": float(np.min(ious)),
            "masks": len(ious),
            "max_score_diff": score_diff,
            "max_embedding_diff": emb_diff,
            "pass": float(np.mean(ious)) >= PARITY_MIN,
        }

    out: dict[str, Any] = {}
    for precision in run.plan.parity_precisions:
        out[f"mobilesam {precision}"] = compare(SamPredictor(run.ours, precision=precision))
    if run.official is not None:
        with torch.no_grad():
            out["official fp32"] = compare(run.official.SamPredictor(run.reference))
    for name, r in out.items():
        verdict = "ok" if r["pass"] else "BELOW 0.99"
        run.row(
            "parity",
            f"{name}: mean / min mask IoU",
            f"{r['mean_mask_iou']:.4f} / {r['min_mask_iou']:.4f} ({verdict})",
        )
    return out


def encoder_input(run: Run, batch: int = 1) -> torch.Tensor:
    """picture1 as the encoder takes it, ``(batch, 3, 1024, 1024)`` on the device."""
    x = resize_to_input(run.photos["picture1.jpg"], run.ours.img_size)
    x = run.ours.preprocess(x.to(run.device, torch.float32))
    return x.expand(batch, -1, -1, -1).contiguous()


def encoder_fns(
    run: Run, x: torch.Tensor, precisions: tuple[str, ...], official_precisions: tuple[str, ...]
) -> dict[str, Callable[[], torch.Tensor]]:
    """The encoders on ``x``: this project's in each of ``precisions`` (as ``set_image``
    runs it), the official one in each of ``official_precisions``."""
    fns: dict[str, Callable[[], torch.Tensor]] = {}
    for precision in precisions:
        predictor = SamPredictor(run.ours, precision=precision)
        fns[f"mobilesam {precision}"] = lambda p=predictor: p.embed_torch(x)
    if run.reference is not None:
        encoder = run.reference.image_encoder
        for precision in official_precisions:

            def official(p: str = precision) -> torch.Tensor:
                with torch.no_grad(), autocast(run.device, p):
                    return encoder(x)

            fns[f"official {precision}"] = official
    return fns


def step_encoder(run: Run) -> dict:
    """Encoder latency at batch 1 in each precision."""
    x = encoder_input(run)
    precisions = run.plan.encoder_precisions
    times, peaks = timed(run, encoder_fns(run, x, precisions, precisions), run.plan.encoder_rounds)
    out = {name: figures(t, peaks[name]) for name, t in times.items()}
    for precision in precisions:
        ours = out[f"mobilesam {precision}"]["median_ms"]
        theirs = out.get(f"official {precision}", {}).get("median_ms")
        run.row(
            "encoder",
            f"batch 1, {precision}",
            ms(ours),
            ms(theirs) if theirs else "-",
            ratio(theirs, ours),
        )
    return out


def step_throughput(run: Run) -> dict:
    """Encoder images/s at each batch size; set_image_batch against the official loop."""
    precisions = run.plan.throughput_precisions
    official_precisions = ("fp32", *[p for p in precisions if p != "fp32"][:1])
    single = run.results.get("encoder", {}).get("official fp32", {}).get("median_ms")
    out: dict[str, Any] = {"official batch-1 fp32 ms": single}
    for batch in run.plan.batches:
        x = encoder_input(run, batch)
        fns = encoder_fns(run, x, precisions, official_precisions)
        times, peaks = timed(run, fns, run.plan.batch_rounds)
        del x
        for name, t in times.items():
            r = figures(t, peaks[name])
            r["images_per_s"] = batch / statistics.median(t)
            out[f"{name} batch {batch}"] = r
        for precision in precisions:
            ours = out[f"mobilesam {precision} batch {batch}"]["images_per_s"]
            same = out.get(f"official {precision} batch {batch}", {}).get("images_per_s")
            theirs = f"{same:.1f}/s" if same else "-"
            vs_single = f" ({ours * single / 1e3:.1f}x official batch 1)" if single else ""
            run.row(
                "throughput",
                f"encoder batch {batch}, {precision}",
                f"{ours:.1f}/s{vs_single}",
                theirs,
                f"{ours / same:.2f}x" if same else "-",
            )
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    # the user-facing call, resize included: set_image_batch against a loop of set_image
    batch = run.plan.batches[0]
    photos = [run.photos["picture1.jpg"]] * batch
    ours = SamPredictor(run.ours)
    fns: dict[str, Callable] = {"mobilesam set_image_batch": lambda: ours.set_image_batch(photos)}
    if run.official is not None:
        theirs = run.official.SamPredictor(run.reference)

        def loop() -> None:
            with torch.no_grad():
                for photo in photos:
                    theirs.set_image(photo)

        fns["official set_image loop"] = loop
    times, peaks = timed(run, fns, run.plan.batch_rounds)
    for name, t in times.items():
        r = figures(t, peaks[name])
        r["images_per_s"] = batch / statistics.median(t)
        out[f"{name} {batch}"] = r
    ours_rate = out[f"mobilesam set_image_batch {batch}"]["images_per_s"]
    loop_rate = out.get(f"official set_image loop {batch}", {}).get("images_per_s")
    run.row(
        "throughput",
        f"{batch} photos, resize included (fp32)",
        f"{ours_rate:.1f}/s",
        f"{loop_rate:.1f}/s" if loop_rate else "-",
        f"{ours_rate / loop_rate:.2f}x" if loop_rate else "-",
    )
    return out


def step_predict(run: Run) -> dict:
    """``predict`` with one point, multimask, on picture1."""
    fns: dict[str, Callable] = {}
    for precision in run.plan.predict_precisions:
        p = SamPredictor(run.ours, precision=precision)
        p.set_image(run.photos["picture1.jpg"])
        fns[f"mobilesam {precision}"] = lambda p=p: p.predict(POINT, LABEL)
    if run.official is not None:
        ref = run.official.SamPredictor(run.reference)
        with torch.no_grad():
            ref.set_image(run.photos["picture1.jpg"])

        def official() -> None:
            with torch.no_grad():
                ref.predict(POINT, LABEL)

        fns["official fp32"] = official
    with torch.inference_mode():
        times, peaks = timed(run, fns, run.plan.predict_rounds, run.plan.predict_inner)
    out = {name: figures(t, peaks[name]) for name, t in times.items()}
    theirs = out.get("official fp32", {}).get("median_ms")
    for name, r in out.items():
        if name.startswith("mobilesam"):
            run.row(
                "predict",
                f"1 point, multimask, {name.split()[1]}",
                ms(r["median_ms"]),
                ms(theirs) if theirs else "-",
                ratio(theirs, r["median_ms"]),
            )
    return out


def match_masks(a: list[dict], b: list[dict]) -> dict:
    """One-to-one matching of two ``generate`` outputs by mask IoU (pycocotools)."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    if not a or not b:
        return {"matched": 0, "of": max(len(a), len(b))}

    def rles(anns: list[dict]) -> list[dict]:
        return [
            mask_utils.encode(np.asfortranarray(x["segmentation"].astype(np.uint8))) for x in anns
        ]

    iou = np.asarray(mask_utils.iou(rles(a), rles(b), [0] * len(b)))
    rows, cols = linear_sum_assignment(-iou)
    return {"matched": int((iou[rows, cols] >= PARITY_MIN).sum()), "of": max(len(a), len(b))}


def step_everything(run: Run) -> dict:
    """Segment everything on picture1 (encoder included), default settings."""
    image = run.photos["picture1.jpg"]
    pps = run.plan.points_per_side
    outputs: dict[str, list] = {}
    fns: dict[str, Callable] = {}
    for precision in run.plan.everything_precisions:
        gen = SamAutomaticMaskGenerator(run.ours, points_per_side=pps, precision=precision)
        name = f"mobilesam {precision}"
        fns[name] = lambda g=gen, n=name: outputs.__setitem__(n, g.generate(image))
    if run.official is not None:
        ref = run.official.SamAutomaticMaskGenerator(run.reference, points_per_side=pps)

        def official() -> None:
            with torch.no_grad():
                outputs["official fp32"] = ref.generate(image)

        fns["official fp32"] = official
    times, peaks = timed(run, fns, run.plan.everything_rounds)
    out = {
        name: {**figures(t, peaks[name]), "masks": len(outputs[name])} for name, t in times.items()
    }
    theirs = out.get("official fp32", {}).get("median_ms")
    for name, r in out.items():
        if name.startswith("mobilesam") and "official fp32" in outputs:
            r["matched_official"] = match_masks(outputs[name], outputs["official fp32"])
        if name.startswith("mobilesam"):
            matched = r.get("matched_official")
            note = f", {matched['matched']}/{matched['of']} match" if matched else ""
            run.row(
                "everything",
                f"picture1, {pps}x{pps} points, {name.split()[1]}",
                f"{ms(r['median_ms'])} ({r['masks']} masks{note})",
                f"{ms(theirs)} ({out['official fp32']['masks']} masks)" if theirs else "-",
                ratio(theirs, r["median_ms"]),
            )
    return out


def step_memory(run: Run) -> dict:
    """The largest peak GPU memory of each side over the steps above."""
    if run.device.type != "cuda":
        run.row("memory", "peak GPU memory", "- (no GPU)")
        return {"note": "no GPU: peak GPU memory is not measured"}
    peaks: dict[str, dict[str, float]] = {"mobilesam": {}, "official": {}}
    for step, result in run.results.items():
        if not isinstance(result, dict):
            continue
        for name, r in result.items():
            if isinstance(r, dict) and r.get("peak_mib") is not None:
                side = "official" if name.startswith("official") else "mobilesam"
                peaks[side][f"{step}: {name}"] = r["peak_mib"]
    out: dict[str, Any] = {"per_figure_mib": peaks}
    for side in peaks:
        out[f"{side} max_mib"] = max(peaks[side].values(), default=None)
    ours, theirs = out["mobilesam max_mib"], out["official max_mib"]
    run.row(
        "memory",
        "largest peak over the figures",
        f"{ours:.0f} MiB" if ours is not None else "-",
        f"{theirs:.0f} MiB" if theirs is not None else "-",
    )
    return out


STEPS: dict[str, Callable[[Run], dict]] = {
    "parity": step_parity,
    "encoder": step_encoder,
    "throughput": step_throughput,
    "predict": step_predict,
    "everything": step_everything,
    "memory": step_memory,
}


# --------------------------------------------------------------------------- the run


def device_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"type": device.type}
    props = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
    }


def jsonable(data: Any) -> Any:
    """``data`` with NumPy scalars as Python numbers and anything else JSON cannot hold as its
    text, so that writing the results never fails."""

    def convert(value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else str(value)

    return json.loads(json.dumps(data, default=convert))


def run_steps(run: Run, steps: dict[str, Callable[[Run], dict]], save: Callable[[], None]):
    """Each step in turn: its figures in ``run.results[name]``, or ``{"error": ...}`` after a
    one-line report; ``save()`` after each. Returns the names of the failed steps."""
    failed = []
    for name, step in steps.items():
        start = time.perf_counter()
        try:
            run.results[name] = step(run)
        except Exception as exc:  # noqa: BLE001 (one step's failure must not stop the others)
            failed.append(name)
            line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
            run.results[name] = {"error": line, "traceback": traceback.format_exc()[-4000:]}
            run.row(name, "FAILED", line[:100])
            print(f"step {name} failed: {line}", file=sys.stderr)
        finally:
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
        seconds = time.perf_counter() - start
        if isinstance(run.results.get(name), dict):
            run.results[name]["step_s"] = round(seconds, 2)
        print(f"  {name}: {seconds:.1f} s", flush=True)
        save()
    return failed


@contextlib.contextmanager
def official_nms_on_cpu(official: ModuleType | None) -> Iterator[str]:
    """Where the official code runs on the torchvision stand-ins (``stubs/``), their greedy
    NMS keeps its bookkeeping on the CPU; GPU boxes go through it on the CPU (what this
    project's NMS does too), the result back on their device."""
    ops = sys.modules.get("torchvision.ops.boxes")
    if official is None or ops is None or "stubs" not in str(getattr(ops, "__file__", "")):
        yield "torchvision" if official is not None else "-"
        return
    original = ops.nms

    def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return original(boxes.cpu(), scores.cpu(), iou_threshold).to(boxes.device)

    ops.nms = nms
    try:
        yield "stand-in greedy NMS on the CPU (torchvision not importable)"
    finally:
        ops.nms = original


def main() -> int:
    ap = argument_parser(__doc__)
    ap.add_argument(
        "--device",
        default=None,
        help="cuda, cuda:N or cpu (default: cuda where available, else a --device cpu --quick "
        "dry run)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny repeat counts and sizes")
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    ap.add_argument("--checkpoint", default=str(CKPT))
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    add_official_argument(ap)
    args = ap.parse_args()

    if args.device is None and not torch.cuda.is_available():
        print("no GPU is present (torch.cuda.is_available() is False): dry run on the CPU")
        args.device, args.quick = "cpu", True
    device = resolve_device(args.device or "cuda")
    if device.type == "cpu" and not args.quick:  # the full plan is hours of CPU time
        print("--device cpu: the dry run (--quick)")
        args.quick = True
    plan = Plan.quick(device) if args.quick else Plan()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        plan = plan.without("bf16")
    started = time.perf_counter()
    official = import_official(args.official)
    reference = None
    if official is not None:
        reference = official_model(official, args.checkpoint).to(device).eval()
    run = Run(
        device=device,
        plan=plan,
        ours=build_sam(args.checkpoint, device=device),
        official=official,
        reference=reference,
        photos={
            name: np.array(Image.open(REFERENCE / "images" / name).convert("RGB"))
            for name in dict.fromkeys((*plan.images, "picture1.jpg"))
        },
    )
    print(f"device: {device_info(device)}; plan: {plan}")

    with official_nms_on_cpu(official) as official_nms:
        report: dict[str, Any] = {
            "device": device_info(device),
            "machine": machine_info(),
            "plan": asdict(plan),
            "official": args.official if official is not None else None,
            "official_nms": official_nms,
            "checkpoint": str(args.checkpoint),
            "steps": run.results,
        }
        path_holder: list[Path] = []

        def save() -> None:
            report["wall_s"] = round(time.perf_counter() - started, 1)
            path_holder[:] = [write_json("gpu", jsonable(report), args.json)]

        steps = {name: STEPS[name] for name in args.steps}
        try:
            failed = run_steps(run, steps, save)
        finally:
            save()  # partial results on an interrupt too
    print()
    print_table(run.rows, ("step", "figure", "mobilesam", "official", "speed-up"))
    print(f"\nwrote {path_holder[0]} ({report['wall_s']:.0f} s)")
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
