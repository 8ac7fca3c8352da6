"""The peers' configs and their demo services (run as
`python -m bench.peers.<name>`), and the worked example's rule they all
apply."""

import itertools
import re

INTEGER = re.compile(r"-?[0-9]+")
_TURNS = itertools.cycle(("s1", "s2", "s3"))


def site_for(uid):
    """The worked example: uid 1..100 s1, 101..200 s2, other integer s3;
    round robin (exact: one process) when uid is missing or not a
    number."""
    if uid is None or not INTEGER.fullmatch(uid):
        return next(_TURNS)
    n = int(uid)
    if 1 <= n <= 100:
        return "s1"
    if 101 <= n <= 200:
        return "s2"
    return "s3"
