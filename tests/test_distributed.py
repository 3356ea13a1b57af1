"""A 2-process CPU ``torchrun`` run (gloo): the ranks' weights stay identical, evaluation is merged across ranks,
and only rank 0 writes logs and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from panoptic.engine import read_checkpoint

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def test_torchrun_two_cpu_processes_keep_identical_weights(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "panoptic.engine.cli", "train", "--device", "cpu", "--iterations", "4", "--batch-size", "1",
           "--synthetic-n", "10", "--synthetic-size", "64", "--cache-dir", str(tmp_path / "cache"),
           "--model-arg", "fpn_channels=16", "--out", str(out), "--eval-every", "0", "--checkpoint-every", "2",
           "--log-every", "2", "--threads", "1", "--no-progress", "--debug-rank-digest"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = [(out / f"rank{r}.sha256").read_text().strip() for r in (0, 1)]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["type"] == "train"] == [2, 4]  # rank 0 alone writes
    ev = [r for r in lines if r["type"] == "eval"]
    assert len(ev) == 1 and ev[0]["num_images"] == 2  # both ranks' shares of the 2 val images, merged
    ckpt = read_checkpoint(out / "model_final.pt")
    assert ckpt["meta"].world_size == 2 and len(ckpt["rng"]) == 2  # every rank's RNG state, for --resume
    assert (out / "checkpoint_0000002.pt").is_file()
    assert proc.stdout.count("trained 4 iterations") == 1
