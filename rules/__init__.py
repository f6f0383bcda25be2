"""The rule language (``rules.engine``) and the rule catalogue administrators edit (``rules/catalog``)."""

from pathlib import Path

BUNDLED_CATALOG = Path(__file__).resolve().parent / "catalog"
"""The rule catalogue shipped with the package (the default ``LUMBAR_RULES_DIR``)."""
