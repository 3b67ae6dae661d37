"""Generated test data: labeled corpora built from a seed at run time (nothing secret-shaped
is stored in the repository)."""
