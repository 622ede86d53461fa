"""HF NVLM-D format: our own remote-code modeling files and the helpers that write export directories.

Copied flat into every export directory (see ``MODELING_FILES``): ``configuration_intern_vit.py``,
``configuration_nvlm_d.py``, ``conversation.py``, ``modeling_intern_vit.py``, ``modeling_nvlm_d.py``.
They import only torch, transformers and each other. What writes export directories around them is
``nvlm_train.convert.hf_files``; the tiny test builders live in ``tests/fixtures/hf_builders.py``.
"""

MODELING_FILES = (
    "configuration_intern_vit.py",
    "configuration_nvlm_d.py",
    "conversation.py",
    "modeling_intern_vit.py",
    "modeling_nvlm_d.py",
)
