"""The bullmq boundary: the producer side (`producer.py`), the worker's runner
(`runner.py`, with bullmq's fetch-next in `fetch_next.py`) and the retry schedule
(`retry.py`). Queues are wire-compatible with Node's BullMQ."""
