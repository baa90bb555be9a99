"""``lineguard kafka up|down|status`` and ``lineguard topics ensure``."""
