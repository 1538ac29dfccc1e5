"""Personal API keys: create, list, revoke (`/api-keys`)."""
