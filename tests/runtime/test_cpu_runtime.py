"""The CPU runtime redirects megatron-core's CUDA assumptions, only inside its scope."""

from __future__ import annotations

import pytest
import torch

from nvlm_train.runtime.cpu_runtime import cpu_runtime, is_cpu_runtime_active, maybe_cpu_runtime

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-GPU path")


def test_cuda_requests_become_cpu_inside_scope_only():
    with cpu_runtime():
        assert is_cpu_runtime_active()
        assert torch.cuda.current_device() == 0
        a = torch.zeros(3, device="cuda")
        b = torch.empty(2, device=torch.cuda.current_device())
        c = torch.ones(2).cuda()
        d = torch.ones(2).to("cuda")
        e = torch.arange(4, device=torch.device("cuda", 0))
        assert all(t.device.type == "cpu" for t in (a, b, c, d, e))
        # The optimizers' type checks see CUDA type names for float tensors.
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        torch.cuda.synchronize()
    assert not is_cpu_runtime_active()
    assert torch.ones(1).type() == "torch.FloatTensor"
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_nested_and_maybe():
    with maybe_cpu_runtime() as on_cpu:
        assert on_cpu and is_cpu_runtime_active()
        with cpu_runtime():
            assert is_cpu_runtime_active()
        assert is_cpu_runtime_active()  # inner exit does not tear down the outer scope
    assert not is_cpu_runtime_active()


def test_megatron_rng_tracker_forks_the_cpu_generator():
    from megatron.core.tensor_parallel import random as mrandom

    with cpu_runtime():
        mrandom.initialize_rng_tracker(force_reset=True)
        tracker = mrandom.get_cuda_rng_tracker()
        tracker.reset()
        torch.manual_seed(0)
        tracker.add("model-parallel-rng", 123)
        before = torch.get_rng_state()
        with tracker.fork():
            inside = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), before)  # default stream untouched
        torch.manual_seed(123)
        assert torch.equal(inside, torch.rand(3))  # forked stream is the seeded one
        with tracker.fork():
            again = torch.rand(3)
        assert not torch.equal(again, inside)  # the tracked stream advanced
