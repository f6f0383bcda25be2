"""The rule files as a language: the schema (the single source of truth for what a file may say), the
YAML reader that keeps every line and column, the loader of value sets and rule parts, located diagnostics,
and the JSON Schemas editors use."""
