"""Every helper the tests and benchmarks share, one module per job (listed in docs/architecture.md)."""
