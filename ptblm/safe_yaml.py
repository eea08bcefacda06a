"""YAML as ptblm reads configs: a flat mapping of plain values, nothing that expands.

PyYAML's safe loader runs no code, but it does resolve anchors and aliases (`&a`, `*a`). An alias
shares the object it names, so nine levels of nine aliases cost a few hundred bytes of file and
little memory to load, yet the value is billions of elements as soon as anything prints or walks
it (the "billion laughs"): a config error that quoted such a value took 47 s and 2.9 GB, then
died. A config never needs an alias, so the loader refuses one where it stands, before anything
is built. Integers too long to convert and nesting too deep to compose become YAML errors too, so
every malformed input is reported the same way, in one line; so is a key given twice, which
PyYAML would let the last value win silently.

Plain values are read as YAML 1.2 reads them, not as PyYAML's YAML 1.1: `yes`, `on`, `y` are
strings, not true (only true/false are booleans), `1:30` is a string, not 90 (base 60), and
`0123` is 123, not 83 (octal); `1e-3` is a number (YAML 1.1 wants `1.0e-3`). A value that YAML
1.1 would have turned into something else is then refused by the config's type check.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from ptblm.errors import quote


class AliasError(ComposerError):
    """The YAML uses an alias (`*name`)."""


class IntegerTooLong(ConstructorError):
    """An integer with more digits than Python converts."""


class NotAnInteger(ConstructorError):
    """`!!int` on a value that is no YAML 1.2 integer (`!!int 1:30`, `!!int 0b101`)."""


class DuplicateKey(ConstructorError):
    """A key given twice in one mapping (PyYAML would keep the last value, silently)."""


REFUSED = (AliasError, IntegerTooLong, NotAnInteger, DuplicateKey)  # YAML a config refuses


_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")  # YAML 1.2's core schema


class _ConfigLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasError(
                None,
                None,
                f"an alias (*{event.anchor[:20]}) has no place in a config, which is a flat "
                f"mapping of plain values: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):
        """Decimal, 0o octal or 0x hexadecimal (YAML 1.2): a leading zero is no octal."""
        text = self.construct_scalar(node)
        if not _INT.match(text):  # only an explicit !!int gets here without matching
            raise NotAnInteger(
                None, None, f"{quote(text)} is no integer (decimal, 0o or 0x)", node.start_mark
            )
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # more digits than sys.get_int_max_str_digits() converts
            raise IntegerTooLong(
                None,
                None,
                f"an integer of {sum(c.isdigit() for c in node.value)} digits is out of range",
                node.start_mark,
            ) from None

    def construct_mapping(self, node, deep=False):
        marks: dict[Any, list] = {}  # each scalar key's places, by value: `1` and `0x1` are one
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                marks.setdefault(self.construct_object(key_node), []).append(key_node.start_mark)
        twice = {key: found for key, found in marks.items() if len(found) > 1}
        if twice:
            listed = "; ".join(
                f"{quote(key)} on lines {', '.join(str(mark.line + 1) for mark in found)}"
                for key, found in twice.items()
            )
            repeat = min((found[1] for found in twice.values()), key=lambda mark: mark.index)
            raise DuplicateKey(
                None, None, f"a key given more than once ({listed}): keep one", repeat
            )
        return super().construct_mapping(node, deep)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)

# YAML 1.2's core schema for booleans, integers and floats in place of PyYAML's YAML 1.1 ones;
# int before float, which would match `1` too.
_YAML_1_2 = [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", _INT.pattern, "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
]
_ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag.rsplit(":", 1)[-1] not in {"bool", "int", "float"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _kind, _pattern, _first in _YAML_1_2:
    _ConfigLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_kind}", re.compile(_pattern), list(_first)
    )


def load(text: str) -> Any:
    """The value of a YAML text; yaml.YAMLError if it is malformed, uses an alias, repeats a key
    or nests too deep for the (recursive) composer."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(
            "nested too deep: a config is a flat mapping of plain values"
        ) from None
