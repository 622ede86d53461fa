"""Checkpoints: exact resume after kill -9, SIGTERM save-and-exit, resharding, crash-safe saves."""

from __future__ import annotations

import json
import signal
import time

import psutil
import pytest
import torch

from nvlm_train.checkpoint.reader import DistCheckpointReader
from tests.training.conftest import base_overrides, kill_tree, losses, run_train, start_train

pytestmark = pytest.mark.multirank


def _latest(run_dir) -> int:
    tracker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    return int(tracker.read_text()) if tracker.is_file() else 0


def _wait(predicate, proc, timeout=240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early (rc={proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the training run")


@pytest.fixture(scope="module")
def reference_1rank(data_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref1")
    proc = run_train(1, base_overrides(data_cache, run, iters=6) + ["train.save_interval=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, losses(run)


def test_kill_9_then_rerun_continues_bit_identically(data_cache, tmp_path):
    iters = 40
    overrides = base_overrides(data_cache, tmp_path / "run", iters=iters) + ["parallel.tp=2", "train.save_interval=5"]
    ref = run_train(2, base_overrides(data_cache, tmp_path / "ref", iters=iters) + ["parallel.tp=2"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = start_train(2, overrides)
    _wait(lambda: _latest(tmp_path / "run") >= 10, proc)
    assert proc.poll() is None
    kill_tree(proc)
    killed_at = _latest(tmp_path / "run")
    assert 10 <= killed_at < iters
    again = run_train(2, overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and f"at iteration {killed_at}" in again.stderr
    # keep_last=3: only the newest three checkpoints survive.
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("iter_*"))
    assert kept == ["iter_0000030", "iter_0000035", "iter_0000040"]
    expected, got = losses(tmp_path / "ref"), losses(tmp_path / "run")
    assert got.keys() == expected.keys()
    assert all(got[i] == expected[i] for i in expected), [(i, got[i], expected[i]) for i in expected
                                                           if got[i] != expected[i]]


def test_sigterm_saves_and_exits_zero_on_every_rank(data_cache, tmp_path):
    proc = start_train(2, base_overrides(data_cache, tmp_path, iters=100000) + ["parallel.tp=2"])
    metrics = tmp_path / "metrics.jsonl"
    _wait(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, proc)
    # Signal one worker only (as a scheduler might): the ranks agree and all save together.
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "nvlm_train.cli.train" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    saved = _latest(tmp_path)
    assert saved >= 2 and (tmp_path / "checkpoints" / f"iter_{saved:07d}" / "metadata.json").is_file()
    assert "preemption signal received" in out


def test_pp2_checkpoint_resumes_at_tp2(data_cache, tmp_path):
    """Saved at PP2 with an uneven split (1 + 3 of the 4 LLM layers), resumed at TP2."""
    pp2 = ["parallel.pp=2", "parallel.first_stage_layers=1"]
    ref = run_train(2, base_overrides(data_cache, tmp_path / "ref", iters=6) + pp2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    first = run_train(2, base_overrides(data_cache, tmp_path / "run", iters=6)
                      + pp2 + ["train.exit_interval=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert _latest(tmp_path / "run") == 4 and "exit interval reached" in first.stderr
    second = run_train(2, base_overrides(data_cache, tmp_path / "run", iters=6) + ["parallel.tp=2"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "(TP2 PP1" in second.stderr
    expected, got = losses(tmp_path / "ref"), losses(tmp_path / "run")
    for it in (5, 6):
        assert abs(got[it] - expected[it]) <= 1e-5 * abs(expected[it]), (it, got[it], expected[it])


def test_crash_during_save_keeps_previous_checkpoint(data_cache, tmp_path, reference_1rank):
    _, expected = reference_1rank
    base = base_overrides(data_cache, tmp_path, iters=6) + ["train.exit_interval=2"]
    assert run_train(1, base).returncode == 0
    assert _latest(tmp_path) == 2
    crash = run_train(1, base_overrides(data_cache, tmp_path, iters=6) + ["train.exit_interval=4"],
                      module="tests.training.crash_after_write")
    assert crash.returncode != 0
    ckpts = tmp_path / "checkpoints"
    assert _latest(tmp_path) == 2 and not (ckpts / "iter_0000004").exists()
    assert (ckpts / "iter_0000004.tmp").is_dir()  # the torn save stayed aside
    resumed = run_train(1, base_overrides(data_cache, tmp_path, iters=6) + ["train.exit_interval=4"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at iteration 2" in resumed.stderr
    assert _latest(tmp_path) == 4 and not (ckpts / "iter_0000004.tmp").exists()
    got = losses(tmp_path)
    assert [got[i] for i in (1, 2, 3, 4)] == [expected[i] for i in (1, 2, 3, 4)]
    # Iterations 3 and 4 were logged before the torn save and again after the resume: once in the file.
    logged = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_architecture_mismatch_is_named(data_cache, tmp_path, reference_1rank):
    run, _ = reference_1rank
    proc = run_train(1, base_overrides(data_cache, run, iters=8) + ["model.language.num_layers=2"])
    assert proc.returncode == 2
    assert "model.language.num_layers: checkpoint 4, config 2" in proc.stderr


def test_prompt_format_mismatch_on_resume_is_named(data_cache, tmp_path, reference_1rank):
    run, _ = reference_1rank
    proc = run_train(1, base_overrides(data_cache, run, iters=8) + ["data.prompt_format=megatron"])
    assert proc.returncode == 2
    assert (f"{run / 'checkpoints' / 'iter_0000006'} was trained with prompt format 'nvlm_d' and system message "
            "'Answer the questions.', but this run has data.prompt_format='megatron' and system message "
            "'Answer the questions.'; resume with data.prompt_format=nvlm_d data.system_prompt=preset") in proc.stderr
    proc = run_train(1, base_overrides(data_cache, run, iters=8) + ["data.system_prompt=null"])
    assert proc.returncode == 2 and "and system message None" in proc.stderr


def test_stage_starts_from_previous_weights_only(data_cache, tmp_path, reference_1rank):
    previous, _ = reference_1rank
    proc = run_train(1, base_overrides(data_cache, tmp_path, iters=2)
                     + [f"checkpoint.init_from={previous / 'checkpoints'}", "train.precision=fp32"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "initialised model weights from" in proc.stderr and "from iteration 0" in proc.stderr
    first = losses(tmp_path)[1]
    fresh = losses(previous)[1]
    assert first < fresh - 0.2  # starts from trained weights, not from scratch
    bad = run_train(1, base_overrides(data_cache, tmp_path / "x", iters=2) + ["checkpoint.init_from=/nonexistent"])
    assert bad.returncode == 2 and "checkpoint.init_from=/nonexistent does not exist" in bad.stderr


def test_distributed_optimizer_matches_plain_adam(data_cache, tmp_path):
    """The distributed optimizer, with the gradient reduce and the parameter all-gather overlapped with
    compute, takes the same steps as plain Adam, and its final save holds the last step's weights."""
    sizes = ["train.global_batch_size=4", "train.micro_batch_size=1"]
    plain = run_train(2, base_overrides(data_cache, tmp_path / "plain", iters=3) + sizes)
    assert plain.returncode == 0, plain.stderr[-3000:]
    overlap = run_train(2, base_overrides(data_cache, tmp_path / "overlap", iters=3)
                        + sizes + ["optimizer.use_distributed_optimizer=true", "parallel.overlap_grad_reduce=true",
                                   "parallel.overlap_param_gather=true"])
    assert overlap.returncode == 0, overlap.stderr[-3000:]
    a, c = losses(tmp_path / "plain"), losses(tmp_path / "overlap")
    assert "DP2" in overlap.stderr
    for it in (1, 2, 3):
        assert abs(a[it] - c[it]) <= 1e-5 * abs(a[it]), (it, a[it], c[it])
    # Gathered after the last step (without params_in_sync the save holds the step before's weights).
    with DistCheckpointReader(tmp_path / "plain" / "checkpoints" / "iter_0000003") as ref, \
            DistCheckpointReader(tmp_path / "overlap" / "checkpoints" / "iter_0000003") as got:
        weights = [k for k in ref.tensors if k.startswith(("projector.", "language_model."))]
        assert weights
        for key in weights:
            assert torch.allclose(got.read(key), ref.read(key), rtol=1e-5, atol=1e-6), key


def test_bf16_run_saves_and_resumes_exactly(data_cache, tmp_path):
    """bf16 (the GPU default) uses megatron's mixed-precision optimizer, whose checkpoint state must line up
    with every model parameter: resuming from step 2 repeats steps 3 and 4 bit for bit."""
    import shutil

    overrides = base_overrides(data_cache, tmp_path, iters=4) + ["train.precision=bf16", "train.save_interval=2"]
    first = run_train(1, overrides)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "bf16" in first.stderr
    expected = losses(tmp_path)
    ckpts = tmp_path / "checkpoints"
    shutil.rmtree(ckpts / "iter_0000004")
    (ckpts / "latest_checkpointed_iteration.txt").write_text("2\n")
    (tmp_path / "metrics.jsonl").unlink()
    again = run_train(1, overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at iteration 2" in again.stderr
    got = losses(tmp_path)
    assert got.keys() == {3, 4} and all(got[i] == expected[i] for i in got), (got, expected)
