"""Brand voices: a user's named style, applied to the jobs that name it."""
