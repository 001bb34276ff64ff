"""Config: unknown keys, duplicate keys, percent/count, overrides, all errors at once with YAML paths."""

import textwrap

import pytest

from rutune.config import ConfigError, apply_overrides, load_config

GOOD = """
name: t
data:
  sft:
    sources:
      - name: saiga_scored
        percent: 60
"""


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def problems(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), list(overrides))
    return e.value.problems


def test_good_config_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    src = cfg.data.sft.sources[0]
    assert (src.name, src.percent, src.count, src.min_score, src.exclude_regex) == ("saiga_scored", 60, None, 8, True)
    assert cfg.base_model.path == "tiny" and cfg.base_model.trust_remote_code is False


def test_every_error_at_once_with_paths_and_lines(tmp_path):
    text = """
    name: t
    data:
      sft:
        sources:
          - name: saiga_scored
            percent: 60
            min_scor: 7
          - name: grandmaster_pro_max
            percent: "60"
          - name: nope
            percent: 5
        max_tokens: 1
        max_tokens: 2
    eval:
      modles: []
    """
    ps = problems(tmp_path, text)
    joined = "\n".join(ps)
    assert len(ps) == 5, joined
    assert "c.yaml:14: data.sft.max_tokens: duplicate key (first at line 13)" in joined
    assert "c.yaml:8: data.sft.sources.0.min_scor: unknown key; did you mean `min_score`?" in joined
    assert "c.yaml:10: data.sft.sources.1.percent:" in joined
    assert "data.sft.sources.2: unknown name 'nope'" in joined
    assert "eval.modles: unknown key; did you mean `models`?" in joined


@pytest.mark.parametrize(
    "source,needle",
    [
        ("percent: -5", "greater than or equal to 0"),
        ("percent: 50\n            count: 3", "not both"),
        ("min_score: 8", "exactly one of `percent`"),
        ("percent: true", "valid number"),
        ("count: 2.5", "valid integer"),
    ],
)
def test_mixture_size_rules(tmp_path, source, needle):
    text = f"""
    name: t
    data:
      sft:
        sources:
          - name: saiga_scored
            {source}
    """
    assert needle in "\n".join(problems(tmp_path, text))


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["data.sft.sources.0.percent=80", "seed=7"])
    assert cfg.data.sft.sources[0].percent == 80 and cfg.seed == 7
    ps = problems(tmp_path, GOOD, ["data.sft.sources.3.percent=1", "seed"])
    assert any("has no item 3" in p for p in ps) and any("expected KEY=VALUE" in p for p in ps)


def test_stage_links(tmp_path):
    text = GOOD + """
train:
  stages:
    - recipe: sft
    - recipe: preference
      init_from: sfft
"""
    ps = problems(tmp_path, text)
    joined = "\n".join(ps)
    assert "train.stages.1.init_from: unknown stage 'sfft'" in joined
    assert "train.stages.1: recipe preference needs data.preference" in joined
    assert len(ps) == 2  # each link problem on its own line, at its own key's line
    assert any(p.endswith("unknown stage 'sfft'; expected one of base, sft") and ":" in p.split(": ")[0] for p in ps)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    assert "invalid YAML" in problems(tmp_path, "name: [unclosed")[0]


def test_non_utf8_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(p)


def test_apply_overrides_creates_nested_keys():
    tree = {"a": {"b": [1, {"c": 2}]}}
    assert apply_overrides(tree, ["a.b.1.c=3", "x.y=[1, 2]"]) == []
    assert tree == {"a": {"b": [1, {"c": 3}]}, "x": {"y": [1, 2]}}
