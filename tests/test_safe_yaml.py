"""Configs built to hurt: YAML alias bombs, values too big to print or to convert, nesting too
deep to parse. Each is one short ConfigError, whatever the input's size."""

from __future__ import annotations

import pytest
import yaml
from helpers import assert_clean_failure, ptblm

from ptblm.config import load_config
from ptblm.errors import ConfigError

SHORT = 400  # characters: a message names a bad value, it never prints all of it


def alias_bomb(levels: int) -> list[str]:
    """YAML lines whose last anchor stands for 9**levels strings: a few hundred bytes that
    expand to tens of megabytes as soon as anything prints the value."""
    names = "abcdefghij"
    lines = [f"&{names[0]} [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for level in range(1, levels):
        lines.append(f"&{names[level]} [" + ",".join([f"*{names[level - 1]}"] * 9) + "]")
    return lines


def test_an_alias_bomb_in_a_file_is_refused_in_one_short_line(tmp_path):
    """Seven levels: 270 bytes of file, a 35 MB message when the value was quoted."""
    anchors = alias_bomb(7)
    text = "".join(f"k{i}: {line}\n" for i, line in enumerate(anchors[:-1]))
    text += f"hidden_size: {anchors[-1]}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text, encoding="utf-8")
    assert len(text) < 300
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    message = str(raised.value)
    assert len(message) < SHORT and "\n" not in message
    assert "bomb.yaml" in message and "alias (*a)" in message and "line 2" in message


def test_an_alias_bomb_in_a_set_is_refused_in_one_short_line():
    override = "hidden_size=[" + ", ".join(alias_bomb(7)) + "]"
    assert len(override) < 300
    with pytest.raises(ConfigError) as raised:
        load_config("small", [override])
    message = str(raised.value)
    assert len(message) < SHORT and "alias (*a)" in message
    assert message.startswith("--set hidden_size=[&a [lol,") and "..." in message


def test_an_alias_bomb_from_the_command_line_exits_2_at_once(tmp_path):
    override = "hidden_size=[" + ", ".join(alias_bomb(8)) + "]"  # 39 MB of message before
    result = ptblm("config", "show", "small", "--set", override, cwd=tmp_path)
    assert_clean_failure(result, 2, "alias (*a) has no place in a config")
    assert len(result.stderr) < SHORT


def test_a_long_value_is_quoted_as_a_short_prefix(tmp_path):
    """No alias, just a long list: the message shows its first characters and '...'."""
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"hidden_size": list(range(10_000))}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    assert "got [0, 1, 2, 3" in str(raised.value) and "..." in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        load_config("small", ["init_scale=" + "x" * 10_000])
    assert len(str(raised.value)) < SHORT


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("hidden_size=" + "1" * 5000, "an integer of 5000 digits is out of range"),
        ("seed=-" + "9" * 5000, "an integer of 5000 digits is out of range"),
    ],
)
def test_an_integer_too_long_to_convert_is_a_config_error(override, fragment):
    """Python refuses to convert more than 4300 digits (ValueError); it is a config error."""
    with pytest.raises(ConfigError, match=fragment) as raised:
        load_config("small", [override])
    assert len(str(raised.value)) < SHORT


def test_an_integer_too_long_in_a_file_names_its_line(tmp_path):
    path = tmp_path / "long-int.yaml"
    path.write_text("hidden_size: " + "7" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1.*5000 digits"):
        load_config(str(path))


def test_nesting_too_deep_for_the_parser_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("hidden_size: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deep"):
        load_config(str(path))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("tie_weights=yes", "'tie_weights' must be true or false, got 'yes'"),
        ("tie_weights=on", "'tie_weights' must be true or false, got 'on'"),
        ("learning_rate=1:30", "'learning_rate' must be a number, got '1:30'"),  # 1.1: 90
        ("hidden_size=190:00", "'hidden_size' must be an integer, got '190:00'"),  # 1.1: 11,400
        (
            "seed=!!int 1:30",
            "'1:30' is no integer",
        ),  # said "an integer of 3 digits is out of range"
        ("seed=!!int 0b101", "'0b101' is no integer"),
    ],
)
def test_what_yaml_1_1_would_turn_into_another_value_is_refused(override, fragment):
    """PyYAML reads YAML 1.1, where `yes` is true and `1:30` is 90 (base 60): a typo trained
    another config with exit 0."""
    with pytest.raises(ConfigError, match=fragment):
        load_config("test", [override])


@pytest.mark.parametrize(
    "override, field, value",
    [
        ("seed=0123", "seed", 123),  # 1.1: 83, octal
        ("seed=0o17", "seed", 15),
        ("seed=0x10", "seed", 16),
        ("learning_rate=1e-3", "learning_rate", 0.001),  # 1.1: the string '1e-3'
        ("learning_rate=2E+1", "learning_rate", 20.0),
        ("tie_weights=True", "tie_weights", True),
        ("keep_prob=.5", "keep_prob", 0.5),
    ],
)
def test_numbers_and_booleans_read_as_yaml_1_2_reads_them(override, field, value):
    assert getattr(load_config("test", [override]), field) == value
