"""DDP recovery: two CPU processes under torch.distributed.run (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from recover_models import TinyNet, digits, trained_teacher
    from hadmc_deploy.recover import RecoveryOptions, recover

    out = sys.argv[1]
    train, val = digits()
    train = train.subset(256)
    teacher = trained_teacher(train, epochs=2)  # same seed on both ranks: the same teacher
    torch.manual_seed(1)
    student = TinyNet(8)
    opts = RecoveryOptions(epochs=2, lr=0.05, batch_size=32, seed=0, checkpoint_path=os.path.join(out, "best.pt"))
    result = recover(student, teacher, train, val, opts)
    rank = result.rank
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{{rank}}.pt"))
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"rank": rank, "world_size": result.world_size, "checkpoint_path": result.checkpoint_path,
                   "history": result.history, "initialized_after": torch.distributed.is_initialized()}}, f)
    """
)


def test_two_process_ddp_ends_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "ddp_recover.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in infos] == [2, 2]
    assert infos[0]["checkpoint_path"] and infos[1]["checkpoint_path"] is None  # rank 0 checkpoints
    assert not any(i["initialized_after"] for i in infos)  # recover closed the group it opened
    # each rank trained on its own shard (different running loss), yet the weights agree
    assert infos[0]["history"][0]["loss"] != infos[1]["history"][0]["loss"]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["format"] == "hadmc-recovery/1"
    # the checkpoint holds the best epoch, which is what both ranks returned
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, w0[key]), key
