"""Files replaced whole: a reader sees the old file or the new one, never
half of either.

The data goes into a temporary file of a fresh name made with O_EXCL
beside the target, then is renamed over it: nothing planted in the
directory (a symlink) is ever written through, and the rename replaces
whatever is at the path, never what it points to.
"""

import json
import os
import tempfile

__all__ = ["replace", "write_json"]


def replace(path, data, mode=0o600):
    """Puts ``data`` (bytes) at ``path``, with ``mode``."""
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(path) or ".",
        prefix=os.path.basename(path) + ".",
        suffix=".tmp",
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path, doc, mode=0o644, indent=None):
    """``doc`` as JSON at ``path``; readable by others unless ``mode``
    says not (the admin process may run as another user)."""
    replace(path, json.dumps(doc, indent=indent).encode(), mode)
