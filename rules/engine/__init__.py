"""The rule language: schema, loader, value sets, PatientRecord, compiler, evaluator, cards, self-tests.

Public entry points: :func:`rules.engine.ruleset.load_ruleset` and :func:`rules.engine.evaluate.evaluate`.
"""
