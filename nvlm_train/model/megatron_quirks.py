"""Silence megatron-core's "Unknown MLP type" warning for our ViT layers, only where it is known to be moot.

megatron-core 0.16's ``TransformerLayer`` picks the MLP's constructor arguments by comparing the
spec's module with ``MLP`` itself; our ViT layers use ``LayerScaledMLP`` (an ``MLP`` subclass), so
every layer logs "Unknown MLP type ... Using default kwargs" (45 lines for NVLM-D-72B). The default
kwargs are right for it: without ``tp_group`` the MLP takes the tensor-parallel group from
``parallel_state``, as the TP tests check. The filter is scoped to building those layers and only
applied on the megatron-core versions where that was checked; on others the warning shows again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from megatron.core import package_info

CHECKED_VERSIONS = ("0.16.",)
_LOGGER = "megatron.core.transformer.transformer_layer"
_MESSAGE = "Unknown MLP type"


class _DropUnknownMLP(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_MESSAGE)


def quirk_applies(version: str = package_info.__version__) -> bool:
    return version.startswith(CHECKED_VERSIONS)


@contextlib.contextmanager
def no_unknown_mlp_warning() -> Iterator[None]:
    """Around building layers whose MLP is an ``MLP`` subclass (our ViT layers)."""
    if not quirk_applies():
        yield
        return
    logger, drop = logging.getLogger(_LOGGER), _DropUnknownMLP()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
