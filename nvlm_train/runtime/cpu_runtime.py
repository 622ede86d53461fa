"""Run megatron-core's own code on machines without CUDA.

megatron-core assumes a CUDA device in a handful of places: it asks
``torch.cuda.current_device()``, creates tensors with ``device="cuda"`` or ``.cuda()``, keeps
its model-parallel RNG streams in CUDA generators, calls ``torch.cuda.synchronize()`` and checks
``param.type()`` against ``torch.cuda.*Tensor`` in its optimizers. Rather than fork those files,
``cpu_runtime()`` redirects exactly those requests to the CPU for the duration of a ``with``
block:

* a ``TorchFunctionMode`` rewrites CUDA device arguments of tensor factories and ``.to()`` to
  ``cpu``, makes ``Tensor.cuda()`` a no-op and reports CPU float tensors as
  ``torch.cuda.*Tensor`` to ``Tensor.type()`` (the optimizers only use it to pick a code path);
* ``torch.cuda.current_device/synchronize/manual_seed/get_rng_state`` and megatron's private
  RNG-state helpers are swapped for CPU equivalents, so the RNG tracker forks the CPU generator.

It is switched on only when CUDA is unavailable (``maybe_cpu_runtime``); nested use is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from nvlm_train.runtime.compat import megatron_rng_patches

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare int means "CUDA device N" to torch's factories.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA device requests to the CPU (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _patches() -> list[tuple[Any, str, Any]]:
    """(object, attribute, replacement) triples applied inside ``cpu_runtime``."""

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    def get_state(device="cuda", clone=False, graph_safe=False):
        state = torch.get_rng_state()
        return state.clone() if clone else state

    return [
        (torch.cuda, "current_device", lambda: 0),
        (torch.cuda, "synchronize", lambda device=None: None),
        # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator
        # directly and make the "all devices" variant a no-op to avoid recursion.
        (torch.cuda, "manual_seed", lambda seed: torch.default_generator.manual_seed(int(seed))),
        (torch.cuda, "manual_seed_all", lambda seed: None),
        (torch.cuda, "get_rng_state", lambda device="cuda": torch.get_rng_state()),
        (torch.cuda, "set_rng_state", lambda state, device="cuda": torch.set_rng_state(state)),
        *megatron_rng_patches(get_state, set_state),
    ]


class _DropForkWarning(logging.Filter):
    # The RNG tracker warns when the CPU generator changes inside a fork; on the CPU runtime
    # the tracked stream *is* the CPU generator, so the warning is expected noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed" not in record.getMessage()


_FORK_LOGGER = "megatron.core.tensor_parallel.random"
_fork_filter = _DropForkWarning()
_active = False


@contextlib.contextmanager
def cpu_runtime() -> Iterator[None]:
    """Let megatron-core run on the CPU inside this block (re-entrant)."""
    global _active
    if _active:
        yield
        return
    saved = []
    for obj, name, replacement in _patches():
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, replacement)
    logging.getLogger(_FORK_LOGGER).addFilter(_fork_filter)
    _active = True
    try:
        with _CudaToCpuMode():
            yield
    finally:
        _active = False
        logging.getLogger(_FORK_LOGGER).removeFilter(_fork_filter)
        for obj, name, original in reversed(saved):
            setattr(obj, name, original)


def is_cpu_runtime_active() -> bool:
    return _active


@contextlib.contextmanager
def maybe_cpu_runtime() -> Iterator[bool]:
    """``cpu_runtime()`` when there is no usable CUDA device, else nothing. Yields whether on CPU."""
    if torch.cuda.is_available():
        yield False
        return
    with cpu_runtime():
        yield True
