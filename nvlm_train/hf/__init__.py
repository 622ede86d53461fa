"""HF NVLM-D format: our own remote-code modeling files and the helpers that write export directories.

Copied flat into every export directory (see ``MODELING_FILES``): ``configuration_intern_vit.py``,
``configuration_nvlm_d.py``, ``conversation.py``, ``modeling_intern_vit.py``, ``modeling_nvlm_d.py``.
They import only torch, transformers and each other. ``export_files`` (config builder, file copy,
sharded safetensors writer) and ``testing`` (tiny builders for tests) stay in the library.
"""

MODELING_FILES = (
    "configuration_intern_vit.py",
    "configuration_nvlm_d.py",
    "conversation.py",
    "modeling_intern_vit.py",
    "modeling_nvlm_d.py",
)
