"""One smartgen API process on a listening socket opened with SO_REUSEPORT: start it twice
(or more) with the same HOST/PORT and the kernel spreads new connections over them.

    python bench/reuseport_api.py [--init-store]

Used by `bench/deployments.py` for the "(c) SO_REUSEPORT" deployment; smartgen has no flag
for it. Settings come from the environment exactly as for `smartgen api`
(`smartgen.config.load_settings()`), and the app is built by smartgen's own factory with
the same options and the same uvicorn settings as `smartgen api` (uvloop, httptools,
lifespan on, no access log, heap settled after start-up).

Socket.IO's long-polling transport does NOT work behind this: the requests of one session
arrive on several connections, which the kernel may give to different processes. Clients
must use `transports: ["websocket"]` (one connection per session).

`--init-store` creates the store's schema/indexes in the lifespan: pass it to the first
process only, and start the others once it is ready.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--init-store", action="store_true", help="create the schema/indexes at start-up"
    )
    args = parser.parse_args()

    import uvicorn

    from smartgen.api.app import create_app
    from smartgen.config import load_settings
    from smartgen.server import heap
    from smartgen.server.http import uvicorn_config
    from smartgen.server.startup import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    app = create_app(settings, init_store=args.init_store, on_started=heap.settle_heap)
    sock = socket.create_server((settings.host, settings.port), backlog=2048, reuse_port=True)
    server = uvicorn.Server(uvicorn_config(app, settings))
    logging.getLogger("smartgen").info(
        "API on http://%s:%d with SO_REUSEPORT", settings.host, settings.port
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
