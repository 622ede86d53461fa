"""Broadcast loading (data.broadcast_batches): the same micro-batches, losses and grad norms as every
rank reading, at TP2, PP2, PP2 x VPP2 and PP3 (uneven split); later stages get no pixels, middle
stages no labels; the reading rank is pp0/tp0."""

from __future__ import annotations

import pytest
import torch

from tests.dist import run_ranks
from tests.training.conftest import base_overrides

pytestmark = pytest.mark.multirank


def _channel_roundtrip(rank: int) -> dict | None:
    """HostChannel on the world group: dtypes, empty and 0-d tensors, described-only keys, meta ints."""
    import torch.distributed as dist

    from nvlm_train.runtime.broadcast import HostChannel, gloo_twin

    group = gloo_twin(dist.group.WORLD)
    ch = HostChannel(group, 0, ("a", "b", "c", "d", "e", "f"), num_meta=2)
    sent = {"a": torch.arange(5, dtype=torch.uint8), "b": torch.tensor([[1.5, -2.0]]), "c": torch.zeros(0, 6,
            dtype=torch.int64), "d": torch.tensor([True, False, True]), "e": torch.tensor(7, dtype=torch.int64)}
    if rank == 0:
        for _ in range(2):  # two messages in flight before the receiver reads either
            ch.send([1], sent, [3, -4], described={"f": torch.zeros(2, 3, dtype=torch.bfloat16)})
        ch.flush()
        return None
    got = [ch.recv() for _ in range(2)]
    return {"ok": all(set(t) == set(sent) and all(torch.equal(t[k], v) and t[k].dtype == v.dtype
                                                  for k, v in sent.items()) for t, _, _ in got),
            "described": got[0][1], "meta": got[1][2]}


def worker(rank, world, base, run_root, layouts, channel_checks=True):
    from megatron.core import parallel_state
    from omegaconf import OmegaConf

    import nvlm_train.training.loop as loop
    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.runtime.broadcast import gloo_twin
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.runtime.launch_env import read_launch_env

    out: dict = {}
    seen: list = []
    step_fn = loop.forward_step

    def recording(data_iterator, model):
        batch = next(data_iterator)
        seen.append({k: v.clone() for k, v in batch.items()})
        return step_fn(iter([batch]), model)

    loop.forward_step = recording
    env = read_launch_env()
    for name, layout in layouts.items():
        for broadcast in (True, False):
            overrides = base + layout + [f"run.dir={run_root}/{name}_{broadcast}",
                                         f"data.broadcast_batches={str(broadcast).lower()}"]
            cfg = compose_config("train", overrides)
            tc = to_dataclass(cfg)
            tc.validate(env.world_size)
            initialize_distributed(tc.parallel, seed=tc.train.seed, num_language_layers=tc.model.language.num_layers,
                                   env=env)
            trainer = loop.Trainer(tc, OmegaConf.to_yaml(cfg), on_cpu=True)
            seen.clear()
            steps = [trainer.train_step() for _ in range(2)]
            val = trainer.evaluate()
            out[name, broadcast] = {
                "batches": list(seen), "val": val, "skips": trainer._skip_counts(),
                "steps": [(s["loss"], s["grad_norm"], s["tiles"], s["rows"], s["counts"]) for s in steps],
                "reads": trainer.feed.reads, "loader_state": trainer.loader.state_dict(),
                "pp": parallel_state.get_pipeline_model_parallel_rank(),
                "tp": parallel_state.get_tensor_model_parallel_rank()}
            trainer.loader.close()
    if channel_checks:
        out["channel"] = _channel_roundtrip(rank)
        # Several groups in one partition (PP2: the TP groups {0}, {1}): each rank gets its own.
        twin = gloo_twin(parallel_state.get_tensor_model_parallel_group())
        out["twin"] = torch.distributed.get_process_group_ranks(twin)
    return out


def _base(data_cache, tmp_path) -> list[str]:
    # eval_iters=8 reaches past the held-out data (6 micro-batches of 24 samples): the tail is padding.
    return [o for o in base_overrides(data_cache, tmp_path) if not o.startswith("run.dir")] + [
        "train.global_batch_size=8", "train.eval_iters=8"]


def _assert_same_as_own_reading(ranks, layouts, last_pp: int) -> None:
    for name in layouts:
        for r in ranks:
            bc, own = r[name, True], r[name, False]
            assert bc["steps"] == own["steps"], name
            assert bc["val"] == own["val"], name
            assert bc["skips"] == own["skips"], name
            assert bc["reads"] == (bc["pp"] == 0 and bc["tp"] == 0) and own["reads"], name
            if bc["reads"]:  # the state a checkpoint saves (pp0/tp0) is the reader's, equal to reading alone
                assert bc["loader_state"] == own["loader_state"], name
            assert len(bc["batches"]) == len(own["batches"]) > 0
            for got, want in zip(bc["batches"], own["batches"], strict=True):
                assert set(got) <= set(want)
                assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in got), name
                text = {"tokens", "position_ids", "seq_boundaries", "num_samples"}
                if bc["pp"] == 0:
                    assert set(got) == set(want), name
                elif bc["pp"] == last_pp:  # the last stage: text and loss keys, no images
                    assert set(got) == text | {"labels", "loss_mask"}, name
                else:  # a middle stage: what packed attention needs, nothing more
                    assert set(got) == text, name
        assert [int(b["num_samples"].sum()) for b in ranks[0][name, True]["batches"][-2:]] == [0, 0]
        for i in range(2):  # every rank knows each step's tiles, later stages too
            assert len({r[name, True]["steps"][i][2] for r in ranks}) == 1, name


def test_broadcast_batches_match_per_rank_reading(data_cache, tmp_path):
    layouts = {"tp2": ["parallel.tp=2", "data.tile_on=device"], "pp2": ["parallel.pp=2"],
               "pp2_device": ["parallel.pp=2", "data.tile_on=device"], "vpp": ["parallel.pp=2", "parallel.vpp=2"]}
    ranks = run_ranks(worker, 2, _base(data_cache, tmp_path), str(tmp_path), layouts)
    _assert_same_as_own_reading(ranks, layouts, last_pp=1)
    assert ranks[0]["tp2", True]["steps"][0][2] > 0  # the steps did carry images
    assert {"images", "image_plans"} <= set(ranks[1]["tp2", True]["batches"][0])  # device route, TP peer
    assert [r["twin"] for r in ranks] == [[0], [1]]
    ch = ranks[1]["channel"]
    assert ch["ok"] and ch["meta"] == [3, -4] and ch["described"] == {"f": (torch.bfloat16, (2, 3))}


def test_stage_keys():
    from nvlm_train.training.batches import BATCH_KEYS, stage_keys

    assert stage_keys(first=True, last=True) == BATCH_KEYS
    assert stage_keys(first=True, last=False) == ("tokens", "position_ids", "seq_boundaries", "num_samples",
                                                  "image_plans", "pixel_values", "images")
    assert stage_keys(first=False, last=True) == ("tokens", "position_ids", "seq_boundaries", "num_samples",
                                                  "labels", "loss_mask")
    assert stage_keys(first=False, last=False) == ("tokens", "position_ids", "seq_boundaries", "num_samples")


def test_broadcast_to_a_middle_stage(data_cache, tmp_path):
    """PP3 with the first stage holding 2 of the 4 layers (2 + 1 + 1): the middle stage gets no labels."""
    layouts = {"pp3": ["parallel.pp=3", "parallel.first_stage_layers=2"]}
    ranks = run_ranks(worker, 3, _base(data_cache, tmp_path), str(tmp_path), layouts, False)
    _assert_same_as_own_reading(ranks, layouts, last_pp=2)
    assert [r["pp3", True]["pp"] for r in ranks] == [0, 1, 2]


def failing_reader_worker(rank, world):
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.training.batches import BatchFeed, ReaderFailed

    initialize_distributed(ParallelConfig(tp=2), seed=1)
    feed = BatchFeed(broadcast=True, device="cpu")

    def corrupt():
        raise OSError("shard 3: unexpected end of data")
        yield  # a generator, like the loader

    try:
        feed.pull(corrupt())
    except (OSError, ReaderFailed) as exc:
        return {"reads": feed.reads, "error": type(exc).__name__, "message": str(exc)}
    return {"reads": feed.reads, "error": None}


def test_a_failing_reader_stops_its_receivers():
    """The reading rank's error reaches the rank waiting for its batch (instead of a hang)."""
    reader, receiver = run_ranks(failing_reader_worker, 2, timeout=120)
    assert reader == {"reads": True, "error": "OSError", "message": "shard 3: unexpected end of data"}
    assert receiver["reads"] is False and receiver["error"] == "ReaderFailed"
    assert "reading rank (global rank 0) failed" in receiver["message"]
