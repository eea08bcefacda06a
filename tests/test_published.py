import dataclasses

from ptblm.config import load_config
from ptblm.published import published_ensemble, published_row


def test_a_shipped_config_finds_its_row_and_a_changed_one_does_not():
    assert published_row(load_config("medium"))[1]["test"] == 82.07  # docs/reference.md
    assert published_row(dataclasses.replace(load_config("small"), hidden_size=201)) is None


def test_the_papers_ensembles():
    """docs/reference.md: 2 / 5 / 10 medium averaged -> test 77.0 / 73.3 / 72.0, valid 80.6 / ...;
    2 / 10 / 38 large -> test 73.6 / 69.5 / 68.7."""
    medium, large = load_config("medium"), load_config("large")
    assert published_ensemble([medium] * 2, "test") == {
        "config": "medium",
        "members": 2,
        "test": 77.0,
    }
    assert published_ensemble([medium] * 10, "valid")["valid"] == 75.2
    assert published_ensemble([large] * 38, "test")["test"] == 68.7
    assert published_ensemble([medium] * 3, "test") is None  # the paper averaged no 3
    assert published_ensemble([medium, large], "test") is None
    assert published_ensemble([load_config("small")] * 2, "test") is None
    assert published_ensemble([medium] * 2, "train") is None
    # The paper averaged its own model: not members with tied weights or variational dropout.
    for variant in ("medium-tied", "medium-variational-tied"):
        assert published_ensemble([load_config(variant)] * 2, "test") is None
    reference = load_config("medium", ["cell=reference"])
    assert published_ensemble([reference] * 2, "test")["test"] == 77.0
