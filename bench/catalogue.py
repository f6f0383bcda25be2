"""A catalogue N times the size of the bundled one, for measuring how evaluation scales with the rule count.

Copy ``k`` (2..N) of every rule file is ``<id>-x<k>.yaml`` with the id ``<id>-x<k>``. Rules refer to each
other by id (``suppresses``, ``consolidate_into``, ``rule:`` conditions, also inside ``escalate``, and the
tests' ``suppressed_by``), so every rule id in a copy is renamed to its copy's id: each copy is a complete,
consistent catalogue of its own (its cauda equina rules consolidate into its own cauda equina card, its red
flags suppress its own advice by name). Value sets, ``terminology.yaml``, the named conditions
(``definitions.yaml``) and the precedence tiers (``precedence.yaml``) are shared: a tier holds the rules of
every copy, so an emergency of one copy also stands down the routine care of the others.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rules.engine import NOT_RULES


def rule_files(catalogue: Path) -> list[Path]:
    return sorted(p for p in catalogue.glob("*.yaml") if p.name not in NOT_RULES)


def replicate(source: Path, target: Path, copies: int) -> int:
    """Write ``source`` with every rule file ``copies`` times into ``target`` (which must not exist).

    Returns:
        The number of rule files in ``target``, the originals included.
    """
    shutil.copytree(source, target)
    files = rule_files(source)
    ids = sorted((p.stem for p in files), key=len, reverse=True)  # longest first: no id is cut short
    # An id is a whole word: not part of a longer kebab-case name (a value set, another id).
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, ids)) + r")(?![\w-])")
    for k in range(2, copies + 1):
        for path in files:
            text = pattern.sub(lambda m, k=k: f"{m.group(1)}-x{k}", path.read_text(encoding="utf-8"))
            (target / f"{path.stem}-x{k}.yaml").write_text(text, encoding="utf-8")
    return len(files) * copies
