"""A wandb run whose service process died (the job's stop signal) stops being used; training goes on."""

from __future__ import annotations

from types import SimpleNamespace

from nvlm_train.training.wandb_guard import SignalSafeWandb, guard_wandb


class _DeadRun:
    def __init__(self):
        self.calls = 0

    def log(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionResetError("Connection lost")

    def finish(self):
        self.calls += 1
        raise ConnectionResetError("Connection lost")


def test_first_failure_is_reported_once_then_wandb_is_dropped(capsys):
    run = _DeadRun()
    safe = SignalSafeWandb(run)
    safe.log({"loss": 1.0}, step=1)
    safe.log({"loss": 0.5}, step=2)
    safe.finish()
    assert run.calls == 1
    err = capsys.readouterr().err
    assert err.count("wandb stopped working (ConnectionResetError: Connection lost)") == 1


def test_guard_leaves_writers_without_wandb_alone():
    writer = SimpleNamespace(wandb=None)
    assert guard_wandb(writer).wandb is None
    assert isinstance(guard_wandb(SimpleNamespace(wandb=_DeadRun())).wandb, SignalSafeWandb)
