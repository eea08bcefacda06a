"""The shipped configs against docs/reference.md's table, and every way a config can be wrong."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import assert_clean_failure, make_corpus, ptblm

from ptblm.config import Config, config_to_yaml, learning_rate_at, load_config, shipped_configs
from ptblm.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

# docs/reference.md, "The configurations", typed by hand.
# fmt: off
REFERENCE_TABLE = {
    "small": dict(
        init_scale=0.1, learning_rate=1.0, max_grad_norm=5, num_layers=2, num_steps=20,
        hidden_size=200, max_epoch=4, max_max_epoch=13, keep_prob=1.0, lr_decay=0.5,
        batch_size=20, vocab_size=10000,
    ),
    "medium": dict(
        init_scale=0.05, learning_rate=1.0, max_grad_norm=5, num_layers=2, num_steps=35,
        hidden_size=650, max_epoch=6, max_max_epoch=39, keep_prob=0.5, lr_decay=0.8,
        batch_size=20, vocab_size=10000,
    ),
    "large": dict(
        init_scale=0.04, learning_rate=1.0, max_grad_norm=10, num_layers=2, num_steps=35,
        hidden_size=1500, max_epoch=14, max_max_epoch=55, keep_prob=0.35, lr_decay=1 / 1.15,
        batch_size=20, vocab_size=10000,
    ),
    "test": dict(
        init_scale=0.1, learning_rate=1.0, max_grad_norm=1, num_layers=1, num_steps=2,
        hidden_size=2, max_epoch=1, max_max_epoch=1, keep_prob=1.0, lr_decay=0.5,
        batch_size=20, vocab_size=10000,
    ),
}
FLOAT_FIELDS = ("init_scale", "learning_rate", "max_grad_norm", "keep_prob", "lr_decay")
INT_FIELDS = (
    "num_layers", "num_steps", "hidden_size", "max_epoch", "max_max_epoch", "batch_size",
    "vocab_size",
)
# fmt: on
# ptblm's own fields; their defaults keep a run exactly as the tutorial's.
DEFAULTS = dict(seed=0, precision="fp32", checkpoint_every=0, allow_tf32=False)
# The long configs also checkpoint mid-epoch (it does not change the training).
SHIPPED_EXTRAS = {"medium": dict(checkpoint_every=500), "large": dict(checkpoint_every=500)}


def write_yaml(folder: Path, values: dict, name: str = "my.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def small_with(**changes) -> dict:
    """The small config's values with some changed; a value of None removes that key."""
    values = dict(REFERENCE_TABLE["small"])
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def problems_of(excinfo) -> list[str]:
    return excinfo.value.problems


# --- the shipped configs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_TABLE))
def test_shipped_config_matches_reference_table(name):
    config = load_config(name)
    ours = {**DEFAULTS, **SHIPPED_EXTRAS.get(name, {})}
    # Every field, the variant options at their defaults included (large's lr_decay is exactly
    # 1 / 1.15, not a rounded 0.8696).
    assert config == Config(**REFERENCE_TABLE[name], **ours)
    # == does not tell 5 from 5.0: the types as the tutorial's.
    for field in FLOAT_FIELDS:
        assert type(getattr(config, field)) is float, f"{name}.{field} should be a float"
    for field in (*INT_FIELDS, *ours):
        expected = int if field in INT_FIELDS else type(ours[field])
        assert type(getattr(config, field)) is expected, f"{name}.{field}"


def test_learning_rate_schedule_matches_the_tutorial():
    # docs/reference.md: small trains 4 epochs at 1.0, then halves the rate every epoch. The numbers are
    # written out by hand; medium decays by 0.8 after 6 epochs, large by 1/1.15 after 14.
    small = load_config("small")
    assert [learning_rate_at(small, epoch) for epoch in range(13)] == [
        1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625,
        0.0078125, 0.00390625, 0.001953125,
    ]  # fmt: skip
    medium = load_config("medium")
    assert [learning_rate_at(medium, epoch) for epoch in (0, 5, 6, 7)] == pytest.approx(
        [1.0, 1.0, 0.8, 0.64]
    )
    assert learning_rate_at(medium, 38) == pytest.approx(0.8**33)
    large = load_config("large")
    assert learning_rate_at(large, 13) == 1.0
    assert learning_rate_at(large, 14) == pytest.approx(1 / 1.15)
    assert learning_rate_at(large, 54) == pytest.approx(1.15**-41)


def test_shipped_configs_are_the_tutorials_four_and_the_four_variants():
    shipped = shipped_configs()
    assert set(shipped) == {
        "small", "medium", "large", "test",
        "medium-tied", "large-tied", "medium-variational-tied", "large-variational-tied",
    }  # fmt: skip
    for name, path in shipped.items():
        assert Path(path).is_file()
        assert Path(path).name == f"{name}.yaml"


# The variants beyond the table: what each changes from its size's tutorial config, by hand.
VARIANTS = {
    "medium-tied": ("medium", {"tie_weights": True}),
    "large-tied": ("large", {"tie_weights": True}),
    "medium-variational-tied": (
        "medium",
        {"tie_weights": True, "dropout_mode": "variational", "embedding_dropout": 0.2,
         "weight_drop": 0.2},
    ),
    "large-variational-tied": (
        "large",
        {"tie_weights": True, "dropout_mode": "variational", "embedding_dropout": 0.3,
         "weight_drop": 0.3, "weight_decay": 1e-7, "keep_prob": 0.5,
         "max_epoch": 11},  # Gal's script: lr 1.0 through epoch 11 (`if epoch > 10` after it)
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_is_its_size_plus_the_documented_changes(name):
    base, changes = VARIANTS[name]
    variant, original = load_config(name).to_dict(), load_config(base).to_dict()
    assert {key for key in variant if variant[key] != original[key]} == set(changes)
    assert {key: variant[key] for key in changes} == changes
    text = shipped_configs()[name].read_text()
    assert f"ptblm train --config {name}" in text and "To beat: test perplexity" in text


def test_the_tutorial_configs_keep_every_variant_option_at_the_faithful_default():
    for name in ("small", "medium", "large", "test"):
        config = load_config(name)
        assert (config.cell, config.forget_bias, config.tie_weights, config.dropout_mode) == (
            "fused",
            0.0,
            False,
            "standard",
        )
        assert config.embedding_dropout == config.weight_drop == config.recurrent_dropout == 0.0
        assert config.weight_decay == 0.0


def test_every_file_in_configs_is_shipped_and_checked_against_a_table_typed_by_hand():
    """A YAML added to configs/ is offered by name and must get its row above (REFERENCE_TABLE
    or VARIANTS), so that no shipped config goes unchecked."""
    files = {path.stem: path for path in CONFIGS_DIR.glob("*.yaml")}
    assert set(files) == set(REFERENCE_TABLE) | set(VARIANTS)
    assert {name: Path(path).resolve() for name, path in shipped_configs().items()} == {
        name: path.resolve() for name, path in files.items()
    }


def test_the_shipped_configs_are_found_where_a_wheel_installs_them(tmp_path):
    """A wheel installs configs/ as ptblm/configs/ without an __init__.py (a namespace
    package, pyproject.toml); `--config small` must work from there, away from the checkout."""
    site = tmp_path / "site"
    shutil.copytree(
        CONFIGS_DIR.parent / "ptblm", site / "ptblm", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(CONFIGS_DIR, site / "ptblm" / "configs")
    result = subprocess.run(
        [sys.executable, "-m", "ptblm", "config", "show", "small"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["hidden_size"] == 200
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ptblm.config import shipped_configs as s; print(*s().values())",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    shipped = [Path(path) for path in listing.stdout.split()]
    assert sorted(path.name for path in shipped) == sorted(
        path.name for path in CONFIGS_DIR.glob("*.yaml")
    )
    assert all(path.parent == site / "ptblm" / "configs" for path in shipped)


# --- resolving a config -----------------------------------------------------------------------


def test_an_empty_config_name_is_unknown_not_the_working_directory():
    """`--config ""` was said to be "a directory" (Path("") is ".")."""
    with pytest.raises(ConfigError, match="unknown config '': not a shipped config"):
        load_config("")


def test_unknown_config_name_lists_the_shipped_names():
    with pytest.raises(ConfigError) as excinfo:
        load_config("smal")
    message = str(excinfo.value)
    assert "smal" in message
    for name in ("small", "medium", "large", "test"):
        assert name in message


def test_yaml_path_loads(tmp_path):
    values = small_with(hidden_size=64, keep_prob=0.9, seed=3, precision="bf16")
    path = write_yaml(tmp_path, values)
    # The file's values, and the defaults of the fields it leaves out (checkpoint_every 0, TF32
    # off, the faithful model).
    assert load_config(str(path)) == Config(**values)


# --- malformed files --------------------------------------------------------------------------


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("init_scale: 0.1\nlearning_rate: 1.0\nmax_grad_norm: 5: 6\n", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    message = str(excinfo.value)
    assert "broken.yaml" in message
    assert "line 3" in message


@pytest.mark.parametrize("text", ["- init_scale\n- 0.1\n", "just some words\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    path = tmp_path / "notamap.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    message = str(excinfo.value)
    assert "notamap.yaml" in message
    assert "mapping" in message


def test_unknown_key(tmp_path):
    path = write_yaml(tmp_path, small_with(hiden_size=200))
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    assert len(problems_of(excinfo)) == 1
    assert "hiden_size" in str(excinfo.value)
    assert "unknown" in str(excinfo.value)


def test_missing_key(tmp_path):
    path = write_yaml(tmp_path, small_with(num_steps=None))
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    assert len(problems_of(excinfo)) == 1
    assert "num_steps" in str(excinfo.value)
    assert "missing" in str(excinfo.value)


def test_empty_file_reports_every_missing_key(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    assert len(problems_of(excinfo)) == len(REFERENCE_TABLE["small"])


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_layers", "two"),  # string for int
        ("hidden_size", True),  # bool for int
        ("num_steps", 20.0),  # float for int
        ("batch_size", 20.5),  # float for int
        ("init_scale", "0.1x"),  # string for float
        ("keep_prob", False),  # bool for float
        ("precision", 32),  # int for str
        ("allow_tf32", 1),  # int for bool
    ],
)
def test_wrong_type_in_file(tmp_path, field, value):
    path = write_yaml(tmp_path, {**small_with(), field: value})
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    assert len(problems_of(excinfo)) == 1
    assert field in str(excinfo.value)


@pytest.mark.parametrize(
    "override, field",
    [
        ("keep_prob=0", "keep_prob"),
        ("keep_prob=1.5", "keep_prob"),
        ("lr_decay=0", "lr_decay"),
        ("learning_rate=-1", "learning_rate"),
        ("num_steps=0", "num_steps"),
        ("max_epoch=14", "max_epoch"),  # small has max_max_epoch 13
        ("precision=fp64", "precision"),
        ("init_scale=.nan", "init_scale"),
        ("max_grad_norm=.inf", "max_grad_norm"),
        ("batch_size=-3", "batch_size"),
        ("checkpoint_every=-1", "checkpoint_every"),
        # Beyond float32, which the weights and the learning rate are: a traceback from torch.
        ("learning_rate=1e39", "learning_rate"),
        ("weight_decay=1e39", "weight_decay"),
        ("forget_bias=-1e39", "forget_bias"),
        ("init_scale=2e38", "init_scale"),  # uniform_(-a, a) needs 2a in float32
    ],
)
def test_out_of_range_override(override, field):
    with pytest.raises(ConfigError) as excinfo:
        load_config("small", [override])
    assert len(problems_of(excinfo)) == 1
    assert field in str(excinfo.value)


@pytest.mark.parametrize("field, value", [("keep_prob", 0.0), ("max_epoch", 14)])
def test_out_of_range_in_file(tmp_path, field, value):
    path = write_yaml(tmp_path, small_with(**{field: value}))
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    assert len(problems_of(excinfo)) == 1
    assert field in str(excinfo.value)
    assert "my.yaml" in str(excinfo.value)


@pytest.mark.parametrize(
    "override, field, value",
    [
        ("keep_prob=1", "keep_prob", 1.0),
        ("lr_decay=1", "lr_decay", 1.0),
        ("max_epoch=13", "max_epoch", 13),
        ("max_epoch=0", "max_epoch", 0),
        ("precision=bf16", "precision", "bf16"),
        ("precision=fp16", "precision", "fp16"),
        ("allow_tf32=true", "allow_tf32", True),
        ("checkpoint_every=500", "checkpoint_every", 500),
    ],
)
def test_boundary_values_are_accepted(override, field, value):
    config = load_config("small", [override])
    assert getattr(config, field) == value
    assert type(getattr(config, field)) is type(value)


def test_several_problems_reported_at_once(tmp_path):
    values = small_with(keep_prob=0.0, num_steps=0, batch_size=None, colour="blue")
    values["hidden_size"] = "big"
    path = write_yaml(tmp_path, values)
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path))
    problems = problems_of(excinfo)
    assert len(problems) == 5
    message = str(excinfo.value)
    assert message.startswith("5 problems")
    for word in ("keep_prob", "num_steps", "batch_size", "colour", "hidden_size"):
        assert word in message


def test_problems_from_file_and_overrides_are_collected_together(tmp_path):
    path = write_yaml(tmp_path, small_with(lr_decay=0.0))
    with pytest.raises(ConfigError) as excinfo:
        load_config(str(path), ["num_layers=0", "nosuchkey=1", "missing_equals_sign"])
    assert len(problems_of(excinfo)) == 4


# --- --set overrides --------------------------------------------------------------------------


def test_set_overrides_are_parsed_as_yaml():
    config = load_config("small", ["learning_rate=0.5", "max_grad_norm=5", "hidden_size=300"])
    # YAML's 5 becomes the float field's 5.0; everything not set stays as shipped.
    assert type(config.max_grad_norm) is float and type(config.hidden_size) is int
    assert config == Config(
        **small_with(learning_rate=0.5, max_grad_norm=5.0, hidden_size=300), **DEFAULTS
    )


def test_later_set_wins():
    assert load_config("small", ["seed=1", "seed=2"]).seed == 2


def test_set_string_for_int_is_a_type_error():
    with pytest.raises(ConfigError) as excinfo:
        load_config("small", ["num_layers=two"])
    assert "num_layers" in str(excinfo.value)


def test_unknown_set_key():
    with pytest.raises(ConfigError) as excinfo:
        load_config("small", ["learning_rat=0.5"])
    assert len(problems_of(excinfo)) == 1
    assert "learning_rat" in str(excinfo.value)


@pytest.mark.parametrize("override", ["learning_rate", "=0.5"])
def test_malformed_set(override):
    with pytest.raises(ConfigError) as excinfo:
        load_config("small", [override])
    assert len(problems_of(excinfo)) == 1
    assert "KEY=VALUE" in str(excinfo.value)


# --- writing a config back --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFERENCE_TABLE))
def test_config_to_yaml_round_trips(tmp_path, name):
    config = load_config(name)
    path = tmp_path / f"{name}-copy.yaml"
    path.write_text(config_to_yaml(config), encoding="utf-8")
    assert load_config(str(path)) == config


def test_config_to_yaml_round_trips_changed_fields_and_header(tmp_path):
    config = load_config(
        "large",
        ["seed=7", "precision=bf16", "checkpoint_every=100", "allow_tf32=true", "keep_prob=0.3"],
    )
    text = config_to_yaml(config, header="written by a test\n\nsecond line: not a key")
    path = tmp_path / "with-header.yaml"
    path.write_text(text, encoding="utf-8")
    # Every changed field comes back, and the header, a key-like line included, is a comment.
    assert load_config(str(path)) == config != load_config("large")
    assert "# second line: not a key" in text.splitlines()


def test_the_seed_is_what_numpy_can_take():
    """numpy's np.random.seed takes 0 <= seed < 2**32; train seeds it with config.seed."""
    with pytest.raises(ValueError):
        np.random.seed(2**32)
    largest = load_config("small", [f"seed={2**32 - 1}"]).seed
    np.random.RandomState(largest)  # the range np.random.seed takes; the global ones untouched
    torch.Generator().manual_seed(largest)
    with pytest.raises(ConfigError, match=r"'seed' is 4294967296; allowed: an integer from 0 to"):
        load_config("small", [f"seed={2**32}"])


def test_train_refuses_a_seed_numpy_cannot_take_before_anything_runs(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    for seed in (2**32, -1):
        result = ptblm("train", "-c", "test", "--seed", seed, "--corpus", corpus, cwd=tmp_path)
        assert_clean_failure(result, 2, f"--seed {seed}: use an integer from 0 to 4294967295")
    result = ptblm(
        "train", "-c", "test", "--set", f"seed={2**32}", "--corpus", corpus, cwd=tmp_path
    )
    assert_clean_failure(result, 2, "'seed' is 4294967296")
    assert not (tmp_path / "runs").exists()


def test_the_largest_float_values_accepted_still_build_and_train(tmp_path):
    """The bounds are float32's own: at them torch still builds the model and runs a window, and
    the divergence guard, not an exception, stops what they make of it."""
    import contextlib

    import torch

    from ptblm.divergence import Diverged
    from ptblm.model import LSTMLanguageModel
    from ptblm.step import EagerStep

    overrides = ["init_scale=1.7e38", "learning_rate=3.4e38", "weight_decay=3.4e38",
                 "forget_bias=-3.4e38", "vocab_size=12", "hidden_size=4"]  # fmt: skip
    config = load_config("test", overrides)
    # Seeded: in about one draw of the weights in thirteen the target's logit tops the others by
    # some 1e38, the loss is exactly 0, and the window trains without diverging (seeds 4, 12, 31).
    torch.manual_seed(0)
    model = LSTMLanguageModel.from_config(config)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    step = EagerStep(model, optimizer, config, contextlib.nullcontext())
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(Diverged):
        step(ids[:, :3], ids[:, 1:])


def test_a_directory_given_as_the_config_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory: give a config's YAML file"):
        load_config(str(tmp_path))


def test_a_fifo_given_as_the_config_is_no_regular_file_and_no_missing_one(tmp_path):
    """It said "no such file" of a file that is there (and reading it would block)."""
    import os

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"is not a regular file: give a config's YAML file"):
        load_config(str(fifo))
