"""The message helpers every error and summary line uses."""

from ptblm.errors import counted, cut, quote


def test_counted_says_one_token_and_two_tokens():
    assert [counted(n, "token") for n in (0, 1, 2)] == ["0 tokens", "1 token", "2 tokens"]


def test_quote_cuts_long_values_and_names_huge_integers():
    assert quote("abc") == "'abc'"
    assert quote("x" * 500).endswith("...") and len(quote("x" * 500)) < 100
    assert quote(10**5000) == "an integer of 5001 digits"
    assert cut("short") == "short"
