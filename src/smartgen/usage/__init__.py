"""Usage and cost: what a user's jobs used, summed by the store."""
