"""The job system's data and rules, without Ray actors or HTTP (docs/architecture.md)."""
