"""The rule engine, grouped by concept:

- ``model``: the rule files as a language (schema, reader, loader, located diagnostics, editor schemas);
- ``codes``: terminology, value sets, ICD-10-CM, units;
- ``record``: the patient record (FHIR resources normalised into facts);
- ``compiler``: conditions compiled into closures, the catalogue into an immutable ``RuleSet``;
- ``evaluation``: one hook call (rules, precedence, cards, orders, reassurance, PAMA, explanations);
- ``selftest``: the rules' embedded test cases.

What the service uses is exported here; it imports nothing else from the engine (import-linter checks).
"""

from rules.engine.codes.icd10cm import check_icd
from rules.engine.compiler.ruleset import NOT_RULES, RuleSet, load_ruleset
from rules.engine.evaluation.evaluate import Evaluation, evaluate, prepare
from rules.engine.evaluation.explain import explain
from rules.engine.evaluation.explain import render as render_trace
from rules.engine.model.diagnostics import Diagnostic, RuleSetError, render_all
from rules.engine.model.source import read_yaml
from rules.engine.selftest import failing_cases, run_tests

__all__ = [
    "NOT_RULES",
    "Diagnostic",
    "Evaluation",
    "RuleSet",
    "RuleSetError",
    "check_icd",
    "evaluate",
    "explain",
    "failing_cases",
    "load_ruleset",
    "prepare",
    "read_yaml",
    "render_all",
    "render_trace",
    "run_tests",
]
