"""The closed loop (search -> train -> search), the search and evaluation runs the CLI starts,
the per-query policy evaluation and the report."""
