"""YAML as ptblm reads configs: a flat mapping of plain values, nothing that expands.

PyYAML's safe loader runs no code, but it does resolve anchors and aliases (`&a`, `*a`). An alias
shares the object it names, so nine levels of nine aliases cost a few hundred bytes of file and
little memory to load, yet the value is billions of elements as soon as anything prints or walks
it (the "billion laughs"): a config error that quoted such a value took 47 s and 2.9 GB, then
died. A config never needs an alias, so the loader refuses one where it stands, before anything
is built. Integers too long to convert and nesting too deep to compose become YAML errors too, so
every malformed input is reported the same way, in one line; so is a key given twice, which
PyYAML would let the last value win silently.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from ptblm.errors import quote


class AliasError(ComposerError):
    """The YAML uses an alias (`*name`)."""


class IntegerTooLong(ConstructorError):
    """An integer with more digits than Python converts."""


class DuplicateKey(ConstructorError):
    """A key given twice in one mapping (PyYAML would keep the last value, silently)."""


REFUSED = (AliasError, IntegerTooLong, DuplicateKey)  # YAML that a config refuses


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
        try:
            return super().construct_yaml_int(node)
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


def load(text: str) -> Any:
    """The value of a YAML text; yaml.YAMLError if it is malformed, uses an alias, repeats a key
    or nests too deep for the (recursive) composer."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError(
            "nested too deep: a config is a flat mapping of plain values"
        ) from None
