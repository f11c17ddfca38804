"""Run several ``mobilesam`` commands, one after another, in each process of one torchrun
job: ``torchrun --nproc_per_node N tests/torchrun_commands.py '[["eval", "coco", ...], ...]'``.

For the tests only (``test_scale.py``): one job for several commands starts Python, torch
and the process group once instead of once per command. It joins the gloo group itself, so
the commands find it made (:func:`mobilesam.cli.ranks.join_ranks` then leaves it open).
Rank 0 prints ``codes [...]``, the commands' exit codes; the job exits with the largest.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from mobilesam.cli import main

if __name__ == "__main__":
    commands = json.loads(sys.argv[1])
    dist.init_process_group(backend="gloo")
    codes = [main(command) for command in commands]
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"codes {codes}", flush=True)
    dist.destroy_process_group()
    raise SystemExit(max(codes))
