"""JSON read from files and stores (the MOSN config, service files, etcd
values): one error for every way a text is not a JSON document, deep
nesting included, which the json module reports as a RecursionError."""

import json

__all__ = ["NotJSON", "parse"]


class NotJSON(ValueError):
    """``msg``, and ``where`` in the text ("line L column C", or "")."""

    def __init__(self, msg, where=""):
        super().__init__("%s (%s)" % (msg, where) if where else msg)
        self.msg = msg
        self.where = where


def parse(text):
    """The document of ``text`` (str or UTF-8 bytes); NotJSON if none."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise NotJSON(exc.msg, where) from None
    except RecursionError:
        raise NotJSON("nested too deeply") from None
