"""``pyworker check`` and ``pyworker try``: a config and its filters, no nginx.

    pyworker check conf/mosn.json [-l serverListener ...]
    pyworker try conf/mosn.json -l serverListener -H "uid: 2" [/path?query]
    pyworker try conf/mosn.json --response 200 -R "Server: up"
    pyworker try conf/mosn.json --response 200 --body page.json

``check`` exits 0 when the config loads (every chain is built), 1 when it
does not or a listener named with ``-l`` is missing. ``try`` prints the
verdict for one request and exits 0 (CONTINUE or REPLY), 1 (ERROR) or 2
(the config does not load or the listener is unknown).
"""

import argparse
import json
import logging
import sys

from pyworker import discovery
from pyworker.config import ConfigError, load
from pyworker.testing import run_request, run_response, select_chain
from pyworker.verdict import ACTION_ERROR


def check(path, listeners=(), *, out=None, err=None):
    """Loads the config at ``path`` and prints what it configures; returns
    the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load(path, log_warnings=False)
    except ConfigError as exc:
        print(f"error: {_one_line(exc)}", file=err)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=err)
    missing = [name for name in listeners if name not in config.chains]
    if missing:
        print(
            f"error: {path}: no listener named {', '.join(missing)}; "
            f"listeners: {', '.join(config.chains)}",
            file=err,
        )
        return 1
    print(f"{path}: OK", file=out)
    for listener in config.listeners.values():
        address = f" ({listener.address})" if listener.address else ""
        filters = ", ".join(name for name, _ in listener.chain.filters)
        print(
            f"  listener {listener.name}{address}: "
            f"{filters or '(no filters)'}",
            file=out,
        )
    print(
        f"  log: {config.log_path or '(default)'} at {config.log_level_name}",
        file=out,
    )
    if config.admin:
        print(f"  admin: {config.admin}", file=out)
    if config.metrics.prometheus:
        print(
            f"  metrics: prometheus on {config.metrics.prometheus}"
            f"{config.metrics.prometheus_path}",
            file=out,
        )
    if config.discovery is not None and config.discovery.kind != "file":
        # reached at run time: nothing to look at now
        print(f"  discovery: {config.discovery.describe()}", file=out)
    if config.service_file:
        # the file changes at run time: a bad one now is a warning
        try:
            apps = discovery.load(config.service_file)
        except discovery.ServiceFileError as exc:
            print(
                f"warning: {_one_line(exc)} (mosn_subset has no "
                f"endpoints until it is good)",
                file=err,
            )
        else:
            print(
                f"  service file: {config.service_file} ({len(apps)} "
                f"apps, {sum(map(len, apps.values()))} endpoints)",
                file=out,
            )
    return 0


def try_request(
    path, headers, listener=None, method="GET", path_="/", query="", body=None
):
    """The Verdict of one request through a listener's chain of the config
    at ``path``.

    ``listener`` defaults to the first listener. ``path_`` is the request
    path; a ``?query`` on it is split off when ``query`` is not given.
    Raises ConfigError, or LookupError for an unknown listener.
    """
    return _try(path, headers, listener, method, path_, query, body)[0]


def _try(path, headers, listener, method, path_, query, body):
    if not query and "?" in path_:
        path_, query = path_.split("?", 1)
    chain = select_chain(load(path, log_warnings=False), listener)
    before = _driver_errors(chain)
    verdict = run_request(chain, headers, method, path_, query, body)[0]
    return verdict, _driver_errors(chain) - before, chain


def _driver_errors(chain):
    return sum(getattr(filt, "driver_errors", 0) for _, filt in chain.filters)


def _one_line(exc):
    # one error a line, whatever a filter's own message holds
    return " ".join(str(exc).splitlines())


def main_check(argv=None):
    parser = argparse.ArgumentParser(
        prog="pyworker check",
        description="Check a MOSN-style config: load it and build every "
        "filter chain.",
    )
    parser.add_argument("config", help="the MOSN-style JSON config")
    parser.add_argument(
        "-l",
        "--listener",
        action="append",
        default=[],
        help="also require this listener (a "
        "mosn_filter_chain name); repeatable",
    )
    args = parser.parse_args(argv)
    return check(args.config, args.listener)


def main_try(argv=None):
    parser = argparse.ArgumentParser(
        prog="pyworker try",
        description="Run one request through a listener's filter chain and "
        "print the verdict.",
    )
    parser.add_argument("config", help="the MOSN-style JSON config")
    parser.add_argument(
        "path", nargs="?", default="/", help="request path, with ?query if any"
    )
    parser.add_argument(
        "-l", "--listener", help="the listener (needed if there are several)"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header, as with curl; repeatable",
    )
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-d", "--data", help="request body")
    parser.add_argument(
        "--response",
        type=int,
        metavar="STATUS",
        help="then run the sender filters over a response with this status",
    )
    parser.add_argument(
        "-R",
        "--response-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header of that response; repeatable",
    )
    parser.add_argument(
        "--body",
        metavar="FILE",
        help="the body of that response, read from FILE "
        "('-': standard input), as nginx hands it over "
        "with mosn_response_body on",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the verdict as JSON"
    )
    args = parser.parse_args(argv)
    headers = _headers(parser, args.header)
    response_headers = _headers(parser, args.response_header)
    if args.body is not None and args.response is None:
        parser.error("--body is the response's: give --response STATUS too")
    response_body = None
    if args.body is not None:
        try:
            if args.body == "-":
                response_body = sys.stdin.buffer.read()
            else:
                with open(args.body, "rb") as f:
                    response_body = f.read()
        except OSError as exc:
            print(f"error: cannot read the body: {exc}", file=sys.stderr)
            return 2
    if not logging.getLogger().handlers:  # show a failing filter's traceback
        logging.basicConfig(
            level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
    try:
        verdict, driver_errors, chain = _try(
            args.config,
            headers,
            args.listener,
            args.method,
            args.path,
            "",
            args.data,
        )
    except (ConfigError, LookupError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.listener is None:
        print(
            f"listener: {chain.name} (the first; -l chooses another)",
            file=sys.stderr,
        )
    response = None
    if args.response is not None and verdict.run_senders:
        response = run_response(
            chain,
            args.response,
            response_headers,
            method=args.method,
            path=args.path,
            body=response_body,
            metadata=verdict.metadata,
        )
    if args.json:
        out = verdict.to_dict()
        if response is not None:
            out["response_phase"] = response.to_dict()
        print(json.dumps(out, indent=2))
    else:
        print(format_verdict(verdict))
        if driver_errors:
            print(
                f"note: {driver_errors} metadata driver(s) raised; their "
                f"keys are left unset"
            )
        if response is not None:
            print(f"response phase ({args.response}):")
            print(format_verdict(response))
        elif args.response is not None:
            print(
                "response phase: none (no sender filter runs after this "
                "verdict)"
            )
    failed = verdict.action == ACTION_ERROR or (
        response is not None and response.action == ACTION_ERROR
    )
    return 1 if failed else 0


def _headers(parser, lines):
    headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            parser.error(f"header {line!r} is not 'NAME: VALUE'")
        headers.append((name.strip(), value.strip(" \t")))
    return headers


def format_verdict(verdict):
    """A verdict as the lines ``pyworker try`` prints."""
    status = f" {verdict.status}" if verdict.status else ""
    lines = [f"verdict: {verdict.action_name}{status}"]
    if verdict.upstream is not None:
        lines.append(f"upstream: {verdict.upstream}")
    for key, value in verdict.metadata.items():
        lines.append(f"metadata: {key} = {value}")
    for title, pairs in (
        ("set request header", verdict.request_set),
        ("set response header", verdict.response_set),
        ("add response header", verdict.response_add),
        ("reply header", verdict.reply_headers),
    ):
        lines.extend(f"{title}: {name}: {value}" for name, value in pairs)
    lines.extend(
        f"remove request header: {name}" for name in verdict.request_remove
    )
    lines.extend(
        f"remove response header: {name}" for name in verdict.response_remove
    )
    if verdict.run_senders:
        lines.append("then: the sender filters run on the response")
    if verdict.reply_body:
        body = verdict.reply_body.decode("utf-8", "backslashreplace")
        lines.append(f"reply body: {body}")
    if verdict.response_body is not None:
        body = verdict.response_body.decode("utf-8", "backslashreplace")
        lines.append(
            f"response body ({len(verdict.response_body)} bytes, "
            f"replaces the upstream's): {body}"
        )
    if verdict.log:
        lines.append(f"log: {verdict.log}")
    return "\n".join(lines)
