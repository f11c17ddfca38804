"""Load test of ``mobilesam serve``'s app on uvicorn at 127.0.0.1 (this machine only).

It starts the server in this process on a free loopback port, uploads ``picture1.jpg`` and
runs:
- ``--clients`` concurrent clients sending ``--requests`` segment requests in all (one point
  each, RLE output): p50/p95/p99 latency, throughput, failures;
- fairness: a click sent while segment-everything (32×32) runs, and how long it took beside
  the everything job;
- the process's peak RSS.

It prints a table (with the CPU named) and writes JSON to ``benchmarks/results/serve.json``.
Every request goes to 127.0.0.1; the loops are bounded in count and time.

Usage: ``python benchmarks/serve.py [--clients 16] [--requests 400] [--threads 2]``
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REFERENCE,
    argument_parser,
    describe_machine,
    machine_info,
    print_table,
    write_json,
)

from mobilesam import build_sam  # noqa: E402


def start_server(checkpoint: Path) -> tuple[str, object]:
    import httpx
    import uvicorn

    from mobilesam.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(build_sam(checkpoint)), host="127.0.0.1", port=port, log_level="error"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return base, server
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def load(base: str, image_id: str, clients: int, requests: int) -> dict:
    import httpx

    per_client = max(1, requests // clients)

    def client(k: int) -> list[tuple[int, float]]:
        out = []
        with httpx.Client(base_url=base, timeout=120) as c:
            for i in range(per_client):
                body = {"points": [[40 + 13 * k, 30 + 7 * i]], "labels": [1], "format": "rle"}
                t = time.perf_counter()
                code = c.post(f"/v1/images/{image_id}/segment", json=body).status_code
                out.append((code, time.perf_counter() - t))
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    lat = np.array([t for _, t in results]) * 1000
    return {
        "clients": clients,
        "requests": len(results),
        "failures": sum(code != 200 for code, _ in results),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests_per_s": len(results) / wall,
    }


def fairness(base: str, image_id: str) -> dict:
    import httpx

    with httpx.Client(base_url=base, timeout=600) as c:
        job: dict = {}

        def everything() -> None:
            t = time.perf_counter()
            res = c.post(f"/v1/images/{image_id}/everything", json={"points_per_side": 32})
            job["seconds"], job["status"] = time.perf_counter() - t, res.status_code

        thread = threading.Thread(target=everything)
        thread.start()
        time.sleep(2.0)
        clicks, failed = [], 0
        while thread.is_alive() and len(clicks) < 5:
            t = time.perf_counter()
            body = {"points": [[80, 60]], "labels": [1]}
            failed += c.post(f"/v1/images/{image_id}/segment", json=body).status_code != 200
            clicks.append(time.perf_counter() - t)
            time.sleep(1.0)
        thread.join()
    if failed or job["status"] != 200:  # a failure's latency is no figure
        raise RuntimeError(f"{failed} click(s) failed; everything answered {job['status']}")
    return {"click_s": [round(v, 3) for v in clicks], "everything_s": job["seconds"]}


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--checkpoint", default=str(REFERENCE / "checkpoints" / "mobile_sam_fixture.pt")
    )
    ap.add_argument("--image", default=str(REFERENCE / "images" / "picture1.jpg"))
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import httpx

    base, _ = start_server(Path(args.checkpoint))
    photo = Path(args.image).read_bytes()
    upload = httpx.post(
        f"{base}/v1/images", files={"file": ("p.jpg", photo, "image/jpeg")}, timeout=120
    )
    upload.raise_for_status()
    image_id = upload.json()["id"]
    result = {"load": load(base, image_id, args.clients, args.requests)}
    result["fairness"] = fairness(base, image_id)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(describe_machine(args.threads, float("nan")).split(", fp32 matmul")[0])
    ld, fr = result["load"], result["fairness"]
    print_table(
        [
            (
                str(ld["clients"]),
                str(ld["requests"]),
                str(ld["failures"]),
                f"{ld['p50_ms']:.0f}",
                f"{ld['p95_ms']:.0f}",
                f"{ld['p99_ms']:.0f}",
                f"{ld['requests_per_s']:.1f}",
                f"{max(fr['click_s'], default=float('nan')):.2f}",
                f"{fr['everything_s']:.1f}",
                f"{result['peak_rss_mib']:.0f}",
            )
        ],
        (
            "clients",
            "requests",
            "failed",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s",
            "click during everything, worst s",
            "everything s",
            "peak RSS MiB",
        ),
    )
    out = {"machine": machine_info(), "threads": args.threads, **result}
    print(f"json: {write_json('serve', out, args.json)}")


if __name__ == "__main__":
    main()
