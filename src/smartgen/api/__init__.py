"""The HTTP application: `create_app` (FastAPI + Socket.IO on one port), its dependencies,
error handlers, middleware, rate limits and health routes. Each domain's router lives in
its own folder (`auth/`, `generation/`, `content/`) and uses `deps.py`."""
