"""Server-side batches: many generations submitted together, run as ordinary jobs."""
