"""Logging of the Python side: MOSN's default_log_path and
default_log_level, one line per record, tracebacks folded into it."""

import logging
import os
import sys

FORMAT = "%(asctime)s [%(levelname)s] %(name)s[%(process)d]: %(message)s"


# control bytes, written as nginx's module writes them: a CR or an ESC in
# a filter's message must not forge a log line or hide one
_ESCAPES = {c: "\\x%02x" % c for c in (*range(0x20), 0x7F)}


class OneLineFormatter(logging.Formatter):
    """Keeps each record on one line, so a log line is one event."""

    def format(self, record):
        text = super().format(record)
        return text.replace("\n", " | ").translate(_ESCAPES)


def setup_logging(gateway=None, role="worker", level=None):
    """Logs to the MOSN log file (if the config names one) and, from
    WARNING up, to stderr, which nginx points at its error_log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = OneLineFormatter(FORMAT)
    root.setLevel(
        level
        if level is not None
        else (gateway.log_level if gateway else logging.WARNING)
    )

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    stderr.setLevel(logging.WARNING)
    root.addHandler(stderr)

    path = gateway.log_path if gateway else None
    if path:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            handler = logging.FileHandler(path)
        except OSError as exc:
            logging.getLogger("pyworker").warning(
                "cannot open the log file %s: %s; logging to stderr only",
                path,
                exc,
            )
        else:
            handler.setFormatter(formatter)
            root.addHandler(handler)
    logging.getLogger("pyworker").debug("logging set up for the %s", role)
