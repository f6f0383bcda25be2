"""One hook call evaluated: rules resolved against the record, precedence and consolidation, cards,
suggested orders, reassurance only on sufficient data, PAMA ratings, and explanations."""
