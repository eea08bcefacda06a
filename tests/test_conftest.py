import pytest
from conftest import in_ci


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("1", True), ("yes", True), ("woodpecker", True), ("TRUE", True),
     ("", False), ("0", False), ("false", False), ("False", False), (None, False)],
)  # fmt: skip
def test_any_ci_value_but_empty_0_or_false_counts_as_ci(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected
