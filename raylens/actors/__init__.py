"""The Ray actors and how they are declared, started and reached (docs/architecture.md)."""
