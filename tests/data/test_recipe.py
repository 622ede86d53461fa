import pytest

from nvlm_train.data.recipe import RecipeError, available_recipes, load_recipe, parse_recipe


def test_named_recipes_load_and_validate(tmp_path):
    names = available_recipes()
    assert {"demo", "demo_heldout", "nvlm_d_pretrain", "nvlm_d_sft"} <= set(names)
    for name in names:
        r = load_recipe(name, data_root=tmp_path)
        assert r.datasets and all(p.startswith(str(tmp_path)) for d in r.datasets for p in d.paths)


def test_demo_recipe_contents(tmp_path):
    r = load_recipe("demo", data_root="/data/synth")
    assert [(d.name, d.weight, d.kind, d.max_tiles) for d in r.datasets] == [
        ("synth-conversations", 0.9, "auto", 6), ("synth-captions", 0.1, "caption", 6)]
    assert r.datasets[0].paths == ("/data/synth/train/train-*.tar",)
    assert r.datasets[1].caption_prompt == "<image>\nBriefly describe this image."


def test_sft_recipe_mixes_text_only(tmp_path):
    r = load_recipe("nvlm_d_sft", data_root=tmp_path)
    assert "text" in {d.kind for d in r.datasets}
    assert all(d.max_tiles == 6 for d in r.datasets)
    assert load_recipe("nvlm_d_pretrain", data_root=tmp_path).datasets[0].max_tiles == 1


@pytest.mark.parametrize("data,match", [
    ({"datasets": []}, "non-empty list"),
    ({"datasets": [{"paths": ["a.tar"], "wieght": 1}]}, r"unknown keys \['wieght'\]"),
    ({"datasets": [{"paths": ["a.tar"], "weight": 0}]}, "positive number"),
    ({"datasets": [{"paths": ["a.tar"], "weight": "1"}]}, "positive number"),
    ({"datasets": [{"paths": []}]}, "'paths' must be"),
    ({"datasets": [{"paths": ["a.tar"], "kind": "video"}]}, "'kind' must be one of"),
    ({"datasets": [{"paths": ["a.tar"], "max_tiles": 0}]}, "'max_tiles' must be"),
    ({"datasets": [{"name": "x", "paths": ["a"]}, {"name": "x", "paths": ["b"]}]}, "unique"),
    ({"datasets": [{"paths": ["a"]}], "defaults": {"weight": 2}}, "'defaults' may only set"),
    ({"datasets": [{"paths": ["a"]}], "shuffle": True}, "unknown top-level"),
    ([1, 2], "must be a mapping"),
])
def test_validation_errors_are_specific(data, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(data, "r.yaml")


def test_data_root_variable_required(monkeypatch):
    monkeypatch.delenv("NVLM_DATA_ROOT", raising=False)
    with pytest.raises(RecipeError, match=r"DATA_ROOT.*not set"):
        parse_recipe({"datasets": [{"paths": ["${DATA_ROOT}/x.tar"]}]})
    monkeypatch.setenv("NVLM_DATA_ROOT", "/env/root")
    assert parse_recipe({"datasets": [{"paths": ["${DATA_ROOT}/x.tar"]}]}).datasets[0].paths == ("/env/root/x.tar",)


def test_relative_paths_resolve_against_the_recipe_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("datasets:\n  - paths: ['shards/a-{0..1}.tar', 's3://bucket/b.tar']\n")
    r = load_recipe(f)
    assert r.name == "mine"
    assert r.datasets[0].paths == (str(tmp_path / "shards/a-{0..1}.tar"), "s3://bucket/b.tar")


def test_unknown_recipe_name_lists_available():
    with pytest.raises(RecipeError, match="available: .*demo"):
        load_recipe("no_such_recipe")


def test_invalid_yaml_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("datasets: [\n")
    with pytest.raises(RecipeError, match="broken.yaml: invalid YAML"):
        load_recipe(f)


def test_relative_data_root_is_used_once(tmp_path, monkeypatch):
    """A relative data_root (e.g. ``data.data_root=./shards``) fills ${DATA_ROOT} without being prefixed twice."""
    monkeypatch.chdir(tmp_path)
    r = parse_recipe({"datasets": [{"paths": ["${DATA_ROOT}/x.tar", "y.tar"]}]}, data_root="shards")
    assert r.datasets[0].paths == (str(tmp_path / "shards" / "x.tar"), str(tmp_path / "shards" / "y.tar"))
