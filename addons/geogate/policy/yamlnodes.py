"""YAML read as a node tree, so every value keeps its line and column and every scalar stays text.

Reading scalars as text matters: YAML 1.1 turns `NO` (Norway) into false and `2027-03-31` into a
date. Policies decide what a value means per key, not per YAML's guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode
from yaml.nodes import Node
from yaml.nodes import ScalarNode
from yaml.nodes import SequenceNode


@dataclass(frozen=True, slots=True)
class Position:
    path: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class YamlSyntaxError(ValueError):
    def __init__(self, position: Position, message: str) -> None:
        super().__init__(f"{position}: {message}")
        self.position = position
        self.message = message


def position(path: str, node: Node) -> Position:
    return Position(path, node.start_mark.line + 1, node.start_mark.column + 1)


def compose(text: str, path: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        # PyYAML's composer recurses once per nesting level: `[[[[...` thousands deep
        raise YamlSyntaxError(Position(path, 1, 1), "YAML nested too deeply") from None
    except yaml.reader.ReaderError as e:
        # a control character: the reader knows where (an index into the text), not a mark
        before = text[: e.position]
        where = Position(path, before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1)
        raise YamlSyntaxError(where, f"YAML syntax error: unacceptable character #x{e.character:04x}: {e.reason}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Position(path, mark.line + 1, mark.column + 1) if mark else Position(path, 1, 1)
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise YamlSyntaxError(where, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(Position(path, 1, 1), f"YAML error: {e}") from None


def plain(node: Node | None) -> Any:
    """The node as dicts, lists and strings (no YAML type guessing)."""
    if node is None:
        return None
    if isinstance(node, MappingNode):
        return {plain(k): plain(v) for k, v in node.value}
    if isinstance(node, SequenceNode):
        return [plain(v) for v in node.value]
    if isinstance(node, ScalarNode):
        if node.tag == "tag:yaml.org,2002:null" and node.style is None and node.value in ("", "~", "null", "Null", "NULL"):
            return None
        return node.value
    raise TypeError(node)
