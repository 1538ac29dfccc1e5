"""Generic helpers with no smartgen imports: group commit, a JSON codec, the UTC clock,
text checks and first-come-first-served turns."""
