"""Reading YAML with a position for every key and item.

ruamel.yaml in round-trip mode keeps line and column on every node; this module converts a document to
plain Python data plus a map from each data path to its position, so schema errors found later can point
at a line. YAML 1.2 (``no`` stays a string), duplicate keys are errors, and timestamps stay strings.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ruamel.yaml
from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from rules.engine.diagnostics import Diagnostic

DataPath = tuple[str | int, ...]


class _StringTimestamps(SafeConstructor):
    pass


def _new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    # Dates in rule files are FHIR values and stay strings ("2026-11" is a valid partial date).
    yaml.constructor.add_constructor("tag:yaml.org,2002:timestamp", _StringTimestamps.construct_yaml_str)
    return yaml


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


def _plain(node: Any, path: DataPath, document: SourceDocument) -> Any:
    lc = getattr(node, "lc", None)
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, str(key))
            if lc is not None:
                line, col = lc.key(key)
                document.positions[child] = (line + 1, col + 1)
                line, col = lc.value(key)
                document.values[child] = (line + 1, col + 1)
            out[str(key) if not isinstance(key, str) else key] = _plain(value, child, document)
        return out
    if isinstance(node, list):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            if lc is not None:
                line, col = lc.item(index)
                document.positions[child] = (line + 1, col + 1)
            items.append(_plain(value, child, document))
        return items
    if isinstance(node, str):
        return str(node)  # ruamel's scalar string subclasses become plain str
    return node


# Parsed documents by (display path, content hash): a reload re-parses only the files that changed, which
# matters because ruamel's round-trip parser is pure Python (about 1.4 s for the whole catalogue, nearly all
# of a cold start). Parsed documents are also kept on disk as JSON by content hash, like Python's bytecode
# cache, so a new process (each worker, each restart) reads them instead of parsing again.
_PARSED: OrderedDict[tuple[str, str], SourceDocument] = OrderedDict()
_PARSED_MAX = 4096
_FORMAT = f"1-{ruamel.yaml.__version__}"  # a new layout or parser version ignores older cache files
_disk_cache: Path | None = None


def use_disk_cache(directory: Path | None) -> None:
    """Keep parsed documents under ``directory`` (created private to the user); ``None`` turns it off."""
    global _disk_cache  # one process-wide setting, chosen by the service at start-up
    if directory is not None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = directory.stat()
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                directory = None  # someone else could write parsed "rules" here: do not trust it
        except OSError:
            directory = None  # not writable here: parse as before
    _disk_cache = directory


def _cache_file(digest: str) -> Path | None:
    return _disk_cache / f"{digest}.{_FORMAT}.json" if _disk_cache is not None else None


def _from_disk(display: str, digest: str) -> SourceDocument | None:
    cached = _cache_file(digest)
    if cached is None:
        return None
    try:
        raw = json.loads(cached.read_bytes())
        return SourceDocument(
            display,
            raw["data"],
            {tuple(path): (line, column) for path, line, column in raw["positions"]},
            {tuple(path): (line, column) for path, line, column in raw["values"]},
        )
    except (OSError, ValueError, KeyError, TypeError):  # absent, or written by something else: parse
        return None


def _to_disk(document: SourceDocument, digest: str) -> None:
    cached = _cache_file(digest)
    if cached is None:
        return
    raw = {
        "data": document.data,
        "positions": [[list(path), *where] for path, where in document.positions.items()],
        "values": [[list(path), *where] for path, where in document.values.items()],
    }
    with contextlib.suppress(OSError, ValueError, TypeError):
        handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(raw, out, allow_nan=True)
            os.replace(temporary, cached)  # atomic: a reader sees the whole file or none
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def known_good(key: str) -> bool:
    """Whether a check identified by ``key`` (a content hash) passed before, in any process using this
    cache: expensive checks whose result depends only on their input are done once per cache."""
    return _disk_cache is not None and (_disk_cache / f"ok-{key}").exists()


def remember_good(key: str) -> None:
    if _disk_cache is not None:
        with contextlib.suppress(OSError):
            (_disk_cache / f"ok-{key}").touch()


def _remember(display: str, digest: str, document: SourceDocument) -> None:
    _PARSED[(display, digest)] = document
    while len(_PARSED) > _PARSED_MAX:
        _PARSED.popitem(last=False)


def read_yaml(
    path: Path, display: str, content: bytes | None = None, digest: str | None = None
) -> tuple[SourceDocument | None, list[Diagnostic]]:
    """Parse one YAML file; on a syntax error return no document and a located diagnostic.

    With ``digest`` (a hash of ``content``), an unchanged file is served from a cache of parsed documents.
    """
    if digest is not None and (display, digest) in _PARSED:
        _PARSED.move_to_end((display, digest))
        return _PARSED[(display, digest)], []
    if digest is not None:
        stored = _from_disk(display, digest)
        if stored is not None:
            _remember(display, digest, stored)
            return stored, []
    try:
        text = (content if content is not None else path.read_bytes()).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Diagnostic(display, 1, 1, f"cannot read file: {exc}")]
    try:
        node = _new_yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        problem = problem.split("\n")[0] if problem else "invalid YAML"
        return None, [Diagnostic(display, line, column, f"invalid YAML: {problem}")]
    except YAMLError as exc:
        return None, [Diagnostic(display, 1, 1, f"invalid YAML: {exc}")]
    document = SourceDocument(display, None, {(): (1, 1)})
    document.data = _plain(node, (), document)
    if digest is not None:
        _remember(display, digest, document)
        _to_disk(document, digest)
    return document, []
