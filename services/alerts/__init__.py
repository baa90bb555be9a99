"""Operator alerts: the `alerts` topic -> a webhook (`lineguard alerts`)."""
