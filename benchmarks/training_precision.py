"""Training step time of the ``panoptic compare`` networks in float32 and in bfloat16 autocast on the CPU.

Each network of the default comparison (``upsnet``, ``upsnet_c``, ``mrcnn_psp``: the ``cpu_small`` preset, batch
4 of 128 px scenes of the ``"table6"`` benchmark) is built once per precision with the compare's own training
config (``CompareConfig.default(cpu_amp=...)``); then ``--steps`` training steps (forward, backward, SGD step) are
timed alternately, float32 then bfloat16, on the same few batches, so that both see the same moments of a shared
machine. The first pair is warm-up. Reported per network: the median step time of each precision and their ratio
(bfloat16 / float32: below 1 is faster), with whether this CPU computes bfloat16 in hardware (``cpu_bf16_native``:
AMX or AVX512-BF16 through oneDNN). Where it does not, bfloat16 is emulated and the ratio is above 1: that is why
``panoptic compare`` turns ``cpu_amp`` on only where it is native.

Usage::

    python benchmarks/training_precision.py                  # about 1 minute on 2 cores
    python benchmarks/training_precision.py --quick          # UPSNet-C, 2 timed steps: a smoke run
    python benchmarks/training_precision.py --steps 12 --json precision.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from panoptic.atomic import atomic_write_text
from panoptic.compare import CompareConfig
from panoptic.engine._precision import cpu_bf16_native
from panoptic.engine.data import train_loader
from panoptic.engine.distributed import init_distributed
from panoptic.engine.trainer import Trainer

NETWORKS = ("upsnet", "upsnet_c", "mrcnn_psp")


def _trainer(network: str, cpu_amp: bool, tmp: str) -> Trainer:
    full = CompareConfig.default(cpu_amp=cpu_amp)
    data = dataclasses.replace(full.data, synthetic_n=16, synthetic_val_fraction=0.25, cache_dir=f"{tmp}/data")
    config = dataclasses.replace(full, data=data).train_config(network, f"{tmp}/{network}-{cpu_amp}")
    return Trainer(config, init_distributed("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per precision and network (after 1 warm-up)")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated subset of %(default)s")
    ap.add_argument("--quick", action="store_true", help="smoke run: upsnet_c only, 2 timed steps")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    networks = ["upsnet_c"] if args.quick else args.networks.split(",")
    steps = 2 if args.quick else args.steps
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown or steps < 1:
        ap.error(f"--networks takes names from {','.join(NETWORKS)} (got {','.join(unknown)})" if unknown
                 else "--steps must be at least 1")

    out: dict = {"cpu_bf16_native": cpu_bf16_native(), "threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "torch": torch.__version__, "networks": {}}
    print(f"bfloat16 in hardware: {out['cpu_bf16_native']}; {out['threads']} threads; torch {torch.__version__}")
    print("| network | float32 s/step | bfloat16 s/step | bfloat16 / float32 |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for network in networks:
            trainers = {amp: _trainer(network, amp, tmp) for amp in (False, True)}
            first = trainers[False]
            batches = list(train_loader(first.train_set, first.config.batch_size, seed=0, info=first.info, start=0,
                                        end=4, num_workers=0))
            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(steps + 1):
                for amp, tr in trainers.items():
                    images, targets = batches[i % len(batches)]
                    t0 = time.perf_counter()
                    tr._step(tr.parts, images, targets)
                    if i:  # the first pair warms up oneDNN's kernels and the allocator
                        times[amp].append(time.perf_counter() - t0)
            f32, bf16 = statistics.median(times[False]), statistics.median(times[True])
            out["networks"][network] = {"float32_s": f32, "bfloat16_s": bf16, "ratio": bf16 / f32,
                                        "float32_all_s": times[False], "bfloat16_all_s": times[True]}
            print(f"| {network} | {f32:.3f} | {bf16:.3f} | {bf16 / f32:.2f} |")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")  # no partial file


if __name__ == "__main__":
    main()
