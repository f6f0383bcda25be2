"""Rules compiled once, at load: conditions into closures, the whole catalogue into an immutable
RuleSet (precedence tiers resolved, named conditions expanded), and the prefetch it needs."""
