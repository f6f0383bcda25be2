"""Errors in rule files as data: where, what, and how to fix it, rendered GCC-style.

rules/catalog/rf-ces.yaml:12:9: error: unknown value set 'sphincter-disturbanse'
  help: did you mean 'sphincter-disturbance'?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """One problem in one file, at a 1-based line and column."""

    path: str
    line: int
    column: int
    message: str
    severity: Literal["error", "warning"] = "error"
    help: str | None = None

    def as_warning(self) -> Diagnostic:
        return Diagnostic(self.path, self.line, self.column, self.message, "warning", self.help)

    def render(self) -> str:
        """``path:line:col: severity: message`` and, when there is one, an indented ``help:`` line."""
        text = f"{self.path}:{self.line}:{self.column}: {self.severity}: {self.message}"
        return f"{text}\n  help: {self.help}" if self.help else text


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A ``did you mean 'x'?`` hint when a close match exists."""
    options = list(choices)
    if word in options:
        return f"{word!r} is a valid key, but not at this level: check the indentation"
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    if not match and len(word) >= 4:  # a truncated name
        match = sorted(o for o in options if o.startswith(word) or o.endswith(word))[:1]
    return f"did you mean {match[0]!r}?" if match else None


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    """All diagnostics, sorted by file and position, one block each."""
    return "\n".join(d.render() for d in sorted(diagnostics))


class RuleSetError(Exception):
    """The catalogue is invalid; carries every diagnostic found, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        errors = sum(1 for d in self.diagnostics if d.severity == "error")
        super().__init__(f"{errors} error(s) in the rule catalogue\n{render_all(self.diagnostics)}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a directed graph, each once (as found by a depth-first search)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append(trail[trail.index(nxt) :])
            elif state.get(nxt) is None:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
    return found
