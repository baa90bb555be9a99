"""``lineguard shadow``, ``promote``, ``rollback`` and ``loop check``: a candidate model scored beside the
serving one, announced only when it is shown better, rolled back from the announcement history."""
