"""Checkpoint conversion between HF NVLM-D directories and our megatron-core distributed checkpoints.

Modules: ``mapping`` (the declarative key tables), ``transforms`` (the few tensor reorders they name),
``hf_config`` (ModelConfig <-> HF ``config.json``), ``safetensors_writer`` (streaming HF output),
``hf_source`` (HF weights read one tensor at a time), ``outdir`` (temp folder + atomic move), ``export``
(mcore -> HF), ``importer`` (HF -> mcore), ``verify`` and ``cli`` (``nvlm-convert``). Checkpoints are
read and written through ``nvlm_train.checkpoint`` (``reader``, ``streaming_save``, ``saved_run``).
"""

from nvlm_train.convert.errors import ConvertError

__all__ = ["ConvertError"]
