"""Checkpoint conversion between HF NVLM-D directories and our megatron-core distributed checkpoints.

Modules: ``mapping`` (the declarative key tables), ``transforms`` (the few tensor reorders they name),
``hf_config`` (ModelConfig <-> HF ``config.json``), ``dcp_reader`` / ``safetensors_writer`` /
``streaming_save`` (streaming I/O), ``hf_source`` (HF weights read one tensor at a time), ``outdir``
(temp folder + atomic move), ``export``
(mcore -> HF), ``importer`` (HF -> mcore), ``verify`` and ``cli`` (``nvlm-convert``).
"""

from nvlm_train.convert.errors import ConvertError

__all__ = ["ConvertError"]
