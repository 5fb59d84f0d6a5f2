"""`python -m healthcheck [--host H] [--port P]`: the health app on a threaded local server.

Compose serves the same app with gunicorn (`healthcheck.app:create_app()`); this is for local runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from werkzeug.serving import make_server

from healthcheck.app import create_app

log = logging.getLogger("healthcheck")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m healthcheck", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = create_app()
    server = make_server(args.host, args.port, app, threaded=True)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("Health app listening", extra={"host": args.host, "port": server.server_port})
    server.serve_forever()
    log.info("Health app stopped")


if __name__ == "__main__":
    main()
