"""``lineguard labels``: operator feedback turned into labelled data for refits."""
