"""``python -m meshext.control.local.demo NAME --listen HOST:PORT [--upstream HOST:PORT]``: run one demo app."""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the named app until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m meshext.control.local.demo")
    parser.add_argument("app", choices=["productpage", "reviews", "ratings"])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where the app serves")
    parser.add_argument("--upstream", metavar="HOST:PORT",
                        help="the sidecar's outbound listener the app calls its next service through")
    arguments = parser.parse_args(argv)
    host, _, port = arguments.listen.rpartition(":")
    # SIGTERM (what `meshext down` sends) ends the process as Ctrl-C would.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if arguments.app == "ratings":
        from meshext.control.local.demo.ratings import serve as serve_ratings

        serve_ratings(host, int(port))
        return
    if arguments.upstream is None:
        parser.error(f"{arguments.app} needs --upstream (its sidecar's outbound listener)")
    upstream_host, _, upstream_port = arguments.upstream.rpartition(":")
    if arguments.app == "productpage":
        from meshext.control.local.demo.productpage import serve as serve_productpage

        serve_productpage(host, int(port), (upstream_host, int(upstream_port)))
    else:
        from meshext.control.local.demo.reviews import serve as serve_reviews

        serve_reviews(host, int(port), (upstream_host, int(upstream_port)))


if __name__ == "__main__":
    main()
