"""Reading YAML with a position for every key and item.

Files are composed by libyaml (PyYAML's C parser) into nodes that carry their marks; this module turns the
nodes into plain Python data plus a map from each data path to its 1-based (line, column), so schema errors
found later can point at a line. Scalars follow the YAML 1.2 core schema (``no`` and ``on`` stay strings,
dates and times stay strings: they are FHIR values), and a key written twice in one mapping is an error.
The whole bundled catalogue reads in tens of milliseconds, so nothing is cached.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rules.engine.model.diagnostics import Diagnostic

DataPath = tuple[str | int, ...]

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where the wheel has it


class _Composer(_BaseLoader):  # type: ignore[misc]
    """Composes nodes only. A plain scalar with no tag is tagged ``_PLAIN`` and resolved here by the YAML 1.2
    core schema; a quoted or explicitly tagged one keeps its tag."""

    yaml_implicit_resolvers: ClassVar[dict[str, Any]] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        tag: str = super().resolve(kind, value, implicit)
        return tag


_STR = "tag:yaml.org,2002:str"
_PLAIN = "lumbar:plain"  # an untagged plain scalar, to be resolved by YAML 1.2 rules
_NULL = re.compile(r"~|null|Null|NULL|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"([-+]?)\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")


class _Invalid(Exception):
    """A document that is valid YAML syntax but not valid data here (a duplicate key, say)."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(message)
        self.line, self.column = node.start_mark.line + 1, node.start_mark.column + 1


_TAGGED: dict[str, tuple[type, ...]] = {
    "tag:yaml.org,2002:int": (int,),
    "tag:yaml.org,2002:float": (float,),
    "tag:yaml.org,2002:bool": (bool,),
    "tag:yaml.org,2002:null": (type(None),),
}


def _scalar(node: ScalarNode) -> Any:
    text: str = node.value
    if node.tag == _PLAIN:
        return _plain_scalar(text)
    if node.tag == _STR:  # quoted, a block scalar, or tagged !!str
        return text
    value = _plain_scalar(text)
    if node.tag == "tag:yaml.org,2002:float" and type(value) is int:
        value = float(value)
    kinds = _TAGGED.get(node.tag)
    if kinds is None or not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _Invalid(node, f"unsupported tag {node.tag} on {text!r}")
    return value


def _plain_scalar(text: str) -> Any:
    """An unquoted scalar by the YAML 1.2 core schema."""
    if _NULL.fullmatch(text):
        return None
    if _TRUE.fullmatch(text):
        return True
    if _FALSE.fullmatch(text):
        return False
    if _INT.fullmatch(text):
        return int(text)
    if _OCT.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _FLOAT.fullmatch(text):
        return float(text)
    if match := _INF.fullmatch(text):
        return -math.inf if match.group(1) == "-" else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    return text


@dataclass
class SourceDocument:
    """A parsed YAML file: its data, and the 1-based (line, column) of every key and item."""

    path: str
    data: Any
    positions: dict[DataPath, tuple[int, int]] = field(default_factory=dict)
    values: dict[DataPath, tuple[int, int]] = field(default_factory=dict)  # where a key's value starts

    def position(self, path: DataPath) -> tuple[int, int]:
        """Where ``path`` is written; for a missing element, where its nearest written parent is."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(path[:end])
            if found is not None:
                return found
        return (1, 1)

    def value_position(self, path: DataPath) -> tuple[int, int]:
        """Where the value of ``path`` is written (for a mapping key), else where ``path`` is."""
        return self.values.get(path) or self.position(path)

    def diagnostic(
        self, path: DataPath, message: str, help: str | None = None, *, at_value: bool = False
    ) -> Diagnostic:
        """An error located at ``path`` in this file (at its value rather than its key with ``at_value``)."""
        line, column = self.value_position(path) if at_value else self.position(path)
        return Diagnostic(self.path, line, column, message, help=help)


def _mark(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _plain(node: Node, path: DataPath, document: SourceDocument) -> Any:
    if isinstance(node, MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _Invalid(key_node, "a mapping key must be a plain value")
            if key_node.value == "<<" and key_node.tag == _PLAIN:
                raise _Invalid(key_node, "merge keys (<<) are not supported: use an alias (*name) instead")
            key = key_node.value if key_node.tag in (_STR, _PLAIN) else str(_scalar(key_node))
            if key in out:
                first = document.positions[(*path, key)][0]
                raise _Invalid(key_node, f"found duplicate key {key!r} (first written on line {first})")
            child = (*path, key)
            document.positions[child] = _mark(key_node)
            document.values[child] = _mark(value_node)
            out[key] = _plain(value_node, child, document)
        return out
    if isinstance(node, SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            document.positions[child] = _mark(item)
            items.append(_plain(item, child, document))
        return items
    assert isinstance(node, ScalarNode)
    return _scalar(node)


def read_yaml(
    path: Path, display: str, content: bytes | None = None
) -> tuple[SourceDocument | None, list[Diagnostic]]:
    """Parse one YAML file (``content`` if given, else the file); on an error return no document and a
    located diagnostic."""
    try:
        text = (content if content is not None else path.read_bytes()).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic(display, 1, 1, f"cannot read file: {exc}")]
    document = SourceDocument(display, None, {(): (1, 1)})
    try:
        node = yaml.compose(text, Loader=_Composer)  # composes nodes, constructs nothing
        document.data = None if node is None else _plain(node, (), document)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problem = problem.split("\n")[0] if problem else "invalid YAML"
        return None, [Diagnostic(display, line, column, f"invalid YAML: {problem}")]
    except yaml.YAMLError as exc:
        return None, [Diagnostic(display, 1, 1, f"invalid YAML: {exc}")]
    except _Invalid as exc:
        return None, [Diagnostic(display, exc.line, exc.column, f"invalid YAML: {exc}")]
    return document, []
