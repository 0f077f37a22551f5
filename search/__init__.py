"""Search over rewrite sites (not built yet: see the search issue)."""
