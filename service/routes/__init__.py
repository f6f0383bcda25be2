"""HTTP routes: CDS Hooks (discovery, service calls, feedback) and operations (health, metrics)."""
