"""Prometheus metrics: every metric defined once (`catalog.py`), what records job changes
(`jobs.py`), and the exposition (`exposition.py`: one process or several, the queue-depth
cache, access by token). Code paths record through these modules' small calls; nothing
else imports prometheus_client."""
