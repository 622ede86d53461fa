"""Bad configurations fail early with messages that name the key and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from nvlm_train.config.errors import ConfigError
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.config.store import load_model_config
from nvlm_train.model.transformer_config import padded_vision_heads, padded_vocab_size


def test_world_size_must_divide_by_tp_pp():
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by parallel.tp x parallel.pp = 2 x 2"):
        ParallelConfig(tp=2, pp=2).validate(world_size=6)
    ParallelConfig(tp=2, pp=2).validate(world_size=8)
    assert ParallelConfig(tp=2, pp=2).data_parallel_size(8) == 2


def test_layers_must_divide_by_pipeline_stages():
    with pytest.raises(ConfigError, match=r"num_layers=4 is not divisible by parallel.pp = 3"):
        ParallelConfig(pp=3).validate(world_size=3, num_language_layers=4)
    with pytest.raises(ConfigError, match=r"parallel.pp x parallel.vpp = 8"):
        ParallelConfig(pp=2, vpp=4).validate(world_size=2, num_language_layers=4)
    with pytest.raises(ConfigError, match=r"vpp > 1 needs parallel.pp >= 2"):
        ParallelConfig(pp=1, vpp=2).validate(world_size=1)


def test_uneven_pipeline_split():
    # Explicit: 80 layers, 4 stages: 17 on the first, 21 on each of the other three.
    assert ParallelConfig(pp=4, first_stage_layers=17).first_stage_split(80) == 17
    with pytest.raises(ConfigError, match=r"first_stage_layers=18 cannot split .*=80 over 4 stages.*values: 2, 5, 8"):
        ParallelConfig(pp=4, first_stage_layers=18).validate(4, 80)
    with pytest.raises(ConfigError, match=r"valid values: 2\b"):  # 4 layers, PP2 x VPP2: 2 + 2 only
        ParallelConfig(pp=2, vpp=2, first_stage_layers=1).validate(2, 4)
    with pytest.raises(ConfigError, match=r"needs parallel.pp >= 2"):
        ParallelConfig(first_stage_layers=2).validate(1, 4)
    # From a measured cost: the ViT costs 4.5 layers -> 17 + 4.5 = 21.5 vs 63 / 3 = 21 (the valid 14: 18.5 vs 22).
    assert ParallelConfig(pp=4, vision_cost_layers=4.5).first_stage_split(80) == 17
    assert ParallelConfig(pp=4, vision_cost_layers=0.0).first_stage_split(80) == 20  # free ViT: even
    assert ParallelConfig(pp=2, vision_cost_layers=100.0).first_stage_split(4) == 1  # at least one layer
    assert ParallelConfig(pp=1, vision_cost_layers=3.0).first_stage_split(4) is None  # one stage: nothing to split
    assert ParallelConfig(pp=2).first_stage_split(4) is None  # megatron's even split
    with pytest.raises(ConfigError, match="not both"):
        ParallelConfig(pp=2, first_stage_layers=1, vision_cost_layers=1.0).validate(2, 4)


def test_model_config_errors():
    tiny = load_model_config("nvlm_d_tiny")
    bad = dataclasses.replace(tiny, language=dataclasses.replace(tiny.language, num_query_groups=3))
    with pytest.raises(ConfigError, match="num_attention_heads=4 is not a multiple of .*num_query_groups=3"):
        bad.validate()
    bad = dataclasses.replace(tiny, vision=dataclasses.replace(tiny.vision, image_size=100))
    with pytest.raises(ConfigError, match="image_size=100 is not a multiple of .*patch_size=14"):
        bad.validate()
    bad = dataclasses.replace(tiny, impl="cuda")
    with pytest.raises(ConfigError, match="model.impl='cuda'"):
        bad.validate()
    with pytest.raises(ConfigError, match="model.recompute.vision='sometimes': use null, full or selective"):
        dataclasses.replace(tiny, recompute=dataclasses.replace(tiny.recompute, vision="sometimes")).validate()
    # From the command line the schema refuses it while composing, naming the choices.
    with pytest.raises(Exception) as err:
        load_model_config("nvlm_d_tiny", ["model.recompute.vision=sometimes"])
    assert "expected one of [full, selective]" in str(err.value.__cause__)


def test_unknown_keys_are_rejected_by_the_schema():
    with pytest.raises(Exception, match="model.vision.hidden"):
        load_model_config("nvlm_d_tiny", ["model.vision.hidden=3"])


def test_padding_rules():
    tiny = load_model_config("nvlm_d_tiny")
    assert [padded_vision_heads(tiny, tp) for tp in (1, 2, 4, 8)] == [8, 8, 8, 8]
    no_fixed = dataclasses.replace(tiny, vision=dataclasses.replace(tiny.vision, pad_heads_to_multiple_of=1))
    assert [padded_vision_heads(no_fixed, tp) for tp in (1, 2, 3, 4)] == [5, 6, 6, 8]
    big = load_model_config("nvlm_d_72b")
    assert {padded_vision_heads(big, tp) for tp in (1, 2, 4, 8)} == {32}
    assert {padded_vocab_size(152064, tp) for tp in (1, 2, 4, 8)} == {152576}
    assert padded_vocab_size(1024, 2) == 1024 and padded_vocab_size(1000, 3, 128) == 1152
    assert tiny.tokens_per_tile == 16 and big.tokens_per_tile == 256
