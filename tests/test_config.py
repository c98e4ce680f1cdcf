"""Run configuration: files, overrides, validation messages."""

import pytest

from longssm.config import ConfigError, load_run_config
from longssm.models import ModelConfig


def test_defaults_and_overrides():
    cfg = load_run_config(None, ["--model.d_model=64", "--train.policy=bptt:4", "data.seq_len=16"])
    assert cfg.model.d_model == 64 and cfg.train.policy == "bptt:4" and cfg.data.seq_len == 16
    assert cfg.train.lr == 3e-3


def test_toml_and_yaml_files(tmp_path):
    (tmp_path / "a.toml").write_text('[model]\nmixer = "s4d"\n[train]\nlr = 1\n')
    cfg = load_run_config(tmp_path / "a.toml")
    assert cfg.model.mixer == "s4d" and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    (tmp_path / "b.yaml").write_text("model:\n  n_layers: 3\ndata:\n  corpus: shakespeare\n")
    cfg = load_run_config(tmp_path / "b.yaml", ["--model.n_layers=5"])
    assert cfg.model.n_layers == 5 and cfg.data.corpus == "shakespeare"


@pytest.mark.parametrize(
    "override, message",
    [
        ("--train.policy=sometimes", "train.policy must be one of"),
        ("--data.seq_len=0", "data.seq_len must be > 0"),
        ("--data.seq_len=-4", "data.seq_len must be > 0"),
        ("--model.d_modl=4", "unknown key"),
        ("--model.mixer=rnn", "mixer must be one of"),
        ("--train.lr=fast", "train.lr must be a number"),
        ("--train.progress=3", "must be true or false"),
        ("--optim.lr=3", "section model, data or train"),
        ("--train.p-reset", "must look like"),
        ("--data.tokenizer=gpt2", "data.tokenizer must be"),
        ("--train.policy=p-reset:1.5", "train.policy must be one of"),
    ],
)
def test_invalid_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_run_config(None, [override])
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_run_config(tmp_path / "bad.toml")
    (tmp_path / "c.ini").write_text("x")
    with pytest.raises(ConfigError, match=".toml, .yaml"):
        load_run_config(tmp_path / "c.ini")
    (tmp_path / "d.yaml").write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError):
        load_run_config(tmp_path / "d.yaml")


def test_model_config_validation():
    with pytest.raises(ValueError, match="d_model must be a positive integer"):
        ModelConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"layers": 3})
    assert ModelConfig.from_dict(ModelConfig(n_layers=3).to_dict()).n_layers == 3


def test_shipped_configs_load():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(
        glob.glob(os.path.join(root, "*.toml")) + glob.glob(os.path.join(root, "*.yaml"))
    )
    assert files, "configs/ ships example configs"
    for path in files:
        load_run_config(path)


def test_configuration_doc_is_current():
    import importlib.util
    import os

    docs = os.path.join(os.path.dirname(__file__), "..", "docs")
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", os.path.join(docs, "gen_config_doc.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(os.path.join(docs, "configuration.md")) as f:
        assert f.read() == module.render(), "run: python docs/gen_config_doc.py"


def test_policy_grammar_is_the_one_list_the_docs_follow():
    """``POLICY_GRAMMAR`` is the source; the field docstring and the README table must name each."""
    import inspect
    import os

    from longssm.config import POLICY_GRAMMAR, TrainConfig, policy_choices

    spelled = [n if a is None else f"{n}:{a.letter}" for n, a in POLICY_GRAMMAR.items()]
    assert policy_choices().startswith(", ".join(spelled))
    field_doc = inspect.getsource(TrainConfig).split('policy: str = "previous"')[1].split('"""')[1]
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for name in spelled:
        assert name in field_doc, name
        assert f"| `{name}` |" in readme, name


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("zero", ("zero", None)),
        ("bptt:12", ("bptt", 12)),
        ("p-reset:0.25", ("p-reset", 0.25)),
        ("p-reset:1", ("p-reset", 1.0)),
    ],
)
def test_parse_policy(spec, parsed):
    from longssm.config import parse_policy

    assert parse_policy(spec) == parsed
    assert load_run_config(None, [f"--train.policy={spec}"]).train.policy == spec
