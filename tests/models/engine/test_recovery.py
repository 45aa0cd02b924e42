"""Fault tolerance on real processes: checkpoints resume exactly, and a rank killed with
SIGKILL mid-training ends in a finished job equal to an uninterrupted one."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict

import pytest
import torch

from vigil.models.engine.checkpoint import load_checkpoint, save_checkpoint
from vigil.models.engine.distributed import DistributedError, spawn, supervise
from vigil.models.engine.trainer import FAULT_ENV, TrainConfig, synthetic_task, train_rank

CFG = TrainConfig(steps=60, batch_per_rank=32, checkpoint_every=10, probe_every=20)
TASK = functools.partial(synthetic_task, samples=2048)


pytestmark = pytest.mark.slow


def _job(cfg: TrainConfig, directory: str | None) -> dict:
    return train_rank(cfg, TASK, directory)


def test_checkpoints_are_atomic_and_a_torn_file_falls_back(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"value": step}, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000020.pt",
        "step-00000030.pt",
        "step-00000040.pt",
    ]
    assert load_checkpoint(tmp_path)["value"] == 40
    (tmp_path / "step-00000040.pt").write_bytes(b"torn")  # a half-written newest file
    assert load_checkpoint(tmp_path) == {"value": 30, "step": 30}
    assert load_checkpoint(tmp_path / "none") is None


@pytest.fixture(scope="module")
def uninterrupted() -> list[dict]:
    return spawn(_job, nprocs=4, nodes=2, args=(CFG, None))


def test_a_rank_killed_mid_training_is_restarted_and_the_job_finishes_the_same(
    uninterrupted, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAULT_ENV, "1:34")  # rank 1 SIGKILLs itself after step 34
    messages: list[str] = []
    result = supervise(
        _job, nprocs=4, nodes=2, args=(CFG, str(tmp_path)), max_restarts=2, say=messages.append
    )
    assert len(messages) == 1 and "rank 1 failed: killed by signal SIGKILL" in messages[0]
    # resumed from the checkpoint at step 30: at most one interval (10 steps) redone
    assert all(r["start_step"] == 30 for r in result)
    assert 34 + 1 - result[0]["start_step"] <= CFG.checkpoint_every
    want, got = uninterrupted[0], result[0]
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    for a, b in zip(got["state"].values(), want["state"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got["decisions"] == want["decisions"]
    # and training did something: better than chance on held-out data
    assert want["val_accuracy"] > 0.8


def test_the_best_parameters_so_far_are_checkpointed_and_kept_on_resume(tmp_path):
    cfg = TrainConfig(steps=20, batch_per_rank=32, checkpoint_every=10, select_every=5)
    first = spawn(_job, nprocs=2, args=(cfg, str(tmp_path)))[0]
    saved = load_checkpoint(tmp_path)
    metric, step, params = saved["best"]
    assert (step, metric) == (first["selected_step"], first["selected_accuracy"])
    # a best that only the checkpoint knows: a resumed job must select it, not forget it
    planted = {k: v + 0.5 if v.is_floating_point() else v for k, v in params.items()}
    save_checkpoint(tmp_path, 20, {**saved, "best": (2.0, 5, planted)})
    resumed = spawn(_job, nprocs=2, args=(cfg, str(tmp_path)))[0]
    assert resumed["start_step"] == 20 and resumed["selected_step"] == 5
    for name, value in planted.items():
        torch.testing.assert_close(resumed["state"][name], value)


def test_a_checkpoint_from_another_job_is_refused(tmp_path):
    other = TrainConfig(steps=20, batch_per_rank=32, checkpoint_every=10, lr=0.01)
    spawn(_job, nprocs=2, args=(other, str(tmp_path)))
    assert load_checkpoint(tmp_path)["config"] == asdict(other)
    with pytest.raises(DistributedError, match="from another job"):
        spawn(_job, nprocs=2, args=(CFG, str(tmp_path)))


def test_a_job_that_keeps_failing_gives_up(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "0:2:always")
    cfg = TrainConfig(steps=5, checkpoint_every=0)
    with pytest.raises(DistributedError, match="gave up after 2 attempts: rank 0 failed: killed"):
        supervise(_job, nprocs=2, args=(cfg, None), max_restarts=1, timeout_s=60)


def test_train_nn_runs_ranks_on_emulated_nodes_and_resumes_from_its_checkpoints(tmp_path):
    from typer.testing import CliRunner

    from vigil.apps.cli import app

    runner = CliRunner()
    args = ["train", "nn", "--task", "synthetic", "--nproc", "4", "--nodes", "2"]
    args += ["--steps", "30", "--checkpoint-every", "10", "--checkpoint-dir", str(tmp_path)]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.output.strip().splitlines()[-1])
    assert (result["start_step"], result["steps_run"]) == (0, 30)
    assert load_checkpoint(tmp_path)["step"] == 30
    again = runner.invoke(app, [*args, "--steps", "40", "--json"])
    said = " ".join(again.output.split())
    assert again.exit_code == 1 and "from another job" in said  # the steps changed
    assert "restarting" not in said  # bad input is not retried
    bad = runner.invoke(app, ["train", "nn", "--precision", "fp8"])
    assert bad.exit_code == 2 and "unknown precision 'fp8'" in bad.output
    bad = runner.invoke(app, ["train", "nn", "--nproc", "3", "--nodes", "2"])
    assert bad.exit_code == 2 and "cannot be split evenly" in bad.output


def test_bench_precision_rejects_an_unknown_task():
    from typer.testing import CliRunner

    from vigil.apps.cli import app

    result = CliRunner().invoke(app, ["bench", "precision", "--tasks", "audio"])
    assert result.exit_code == 2 and "unknown task or mode 'audio'" in result.output


def test_four_ranks_on_quarter_batches_train_like_one_rank_on_the_whole_batch():
    """Data parallelism changes nothing but speed: the mean of 4 ranks' gradients on
    quarters of each global batch is the gradient of the whole batch."""
    cfg = TrainConfig(steps=12, batch_per_rank=16, precision="fp32", checkpoint_every=0)
    four = spawn(_job, nprocs=4, nodes=2, args=(cfg, None))[0]
    one = spawn(_job, nprocs=1, args=(TrainConfig(**{**asdict(cfg), "batch_per_rank": 64}), None))[
        0
    ]
    for a, b in zip(four["state"].values(), one["state"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
