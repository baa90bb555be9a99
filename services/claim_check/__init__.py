"""``lineguard claim-check``: the claim-check store's upkeep (``shared.frames_store.ClaimStore``)."""
