"""The `pyworker` command (also `python -m pyworker`).

    pyworker serve   --shm NAME --config FILE [--workers N]  the pool
    pyworker worker  --shm NAME --index I --config FILE      one worker
    pyworker discover --shm NAME --config FILE               etcd / xDS
    pyworker check   FILE [--listener NAME ...]              validate
    pyworker try     FILE [PATH] -H 'uid: 2' [--listener N]  dry run

nginx runs `serve` itself (mosn_spawn on); run it yourself, under systemd
for example, with `mosn_spawn off` and a fixed `mosn_shm_name`.
"""

import argparse
import sys


def _serve(argv):
    from pyworker.supervisor import Supervisor

    p = argparse.ArgumentParser(
        prog="pyworker serve",
        description="Run the Python worker pool on an nginx mosn region.",
    )
    p.add_argument(
        "--shm",
        required=True,
        help="the region's name, as mosn_shm_name (with a /)",
    )
    p.add_argument("--config", required=True, help="the MOSN JSON config")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="how many worker processes (default 1)",
    )
    p.add_argument("--uid", type=int, help="run workers as this user id")
    p.add_argument("--gid", type=int, help="and this group id")
    # nginx's, when it spawns the pool (see pyworker.master)
    p.add_argument(
        "--nginx-channel", type=int, metavar="FD", help=argparse.SUPPRESS
    )
    p.add_argument("--orders", type=int, metavar="FD", help=argparse.SUPPRESS)
    p.add_argument("--orders-seq", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error("--workers must be at least 1")
    shm = a.shm if a.shm.startswith("/") else "/" + a.shm
    channel = orders = None
    try:
        if a.nginx_channel is not None:
            from pyworker.master import NginxChannel

            channel = NginxChannel(a.nginx_channel)
        if a.orders is not None:
            from pyworker.master import Orders

            orders = Orders(a.orders, a.orders_seq)
    except OSError as exc:
        p.error("the descriptors nginx hands over: %s" % exc)
    return Supervisor(
        shm, a.config, a.workers, a.uid, a.gid, channel=channel, orders=orders
    ).run()


def _worker(argv):
    from pyworker.worker import Worker

    p = argparse.ArgumentParser(
        prog="pyworker worker",
        description="One worker process (the supervisor starts these).",
    )
    p.add_argument("--shm", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--stats-dir", help="where to write its counters")
    a = p.parse_args(argv)
    try:
        return Worker(
            a.shm, a.index, a.config, a.uid, a.gid, a.stats_dir
        ).run()
    except Exception:
        # one line in the log, and the supervisor sees the exit code
        import logging
        from pyworker.logs import setup_logging

        setup_logging(None, role="worker")
        logging.getLogger("pyworker.worker").exception(
            "worker %d could not start", a.index
        )
        return 1


def _admin(argv):
    from pyworker.admin import Admin

    p = argparse.ArgumentParser(
        prog="pyworker admin",
        description="The admin API and Prometheus metrics of the pool "
        "(the supervisor starts it).",
    )
    p.add_argument("--shm", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--stats-dir", required=True)
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    a = p.parse_args(argv)
    return Admin(a.shm, a.config, a.stats_dir, a.uid, a.gid).run()


def _discover(argv):
    from pyworker.discovery.process import run

    p = argparse.ArgumentParser(
        prog="pyworker discover",
        description="Follow the etcd or xDS source the config names and "
        "write the endpoint table (the supervisor starts it).",
    )
    p.add_argument("--shm", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--stats-dir")
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    a = p.parse_args(argv)
    return run(a.shm, a.config, a.stats_dir, a.uid, a.gid)


def _check(argv):
    from pyworker.tryout import main_check

    # nginx asks with --nginx: the output is the same, one error a line
    return main_check([a for a in argv if a != "--nginx"])


def _try(argv):
    from pyworker.tryout import main_try

    return main_try(argv)


COMMANDS = {
    "serve": (_serve, "run the worker pool (nginx starts it by itself)"),
    "worker": (_worker, "run one worker (the pool starts these)"),
    "admin": (_admin, "serve the admin API and metrics (the pool starts it)"),
    "discover": (
        _discover,
        "follow etcd or xDS for the endpoints (the pool starts it)",
    ),
    "check": (_check, "validate a MOSN config and its filters"),
    "try": (_try, "print the verdict a request would get, no nginx needed"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        print("\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print("  %-7s %s" % (name, text))
        print("\n`pyworker COMMAND --help` documents each command.")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from pyworker import __version__

        print(__version__)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(
            "pyworker: unknown command %r (try --help)" % argv[0],
            file=sys.stderr,
        )
        return 2
    return command[0](argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
