"""Signed webhooks: endpoints, the default secret, deliveries through their own queue."""
