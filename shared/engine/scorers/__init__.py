"""Per-class patch scorers: one registry (``registry.py``), one protocol (``base.py``), one module each."""
