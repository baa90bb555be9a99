"""``lineguard console``: the operators' web page over the line's topics, and their feedback."""
