"""``lineguard fit``, ``evaluate`` and ``score``: the engine's command-line tools."""
