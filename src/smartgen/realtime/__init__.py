"""Real-time events: what a job's changes announce (`events.py`), the Redis bus that carries
them to every API process (`bus.py`, batched by `batched_relay.py`), and the Socket.IO
server that delivers them to their owners (`server.py`)."""
