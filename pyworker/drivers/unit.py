"""UNIT: sends a user to a site by the number in a request header.

uid 1..100 -> "s1", 101..200 -> "s2", any other integer -> "s3". With no
uid, or one that is not an integer, the driver raises: the key stays unset
and nginx spreads the request over all sites.
"""

import re

from pyworker import MetadataDriver, register_driver

INTEGER = re.compile(r"[+-]?[0-9]{1,64}")  # the cap bounds int()


@register_driver("UNIT")
class UnitDriver(MetadataDriver):
    def init(self, config):
        self.unit_key = config.get("unit_key") or "userid"
        if not isinstance(self.unit_key, str):
            raise ValueError("unit_key must be a header name")

    def build_metadata(self, ctx, headers, buf, trailers):
        uid = headers.get(self.unit_key)
        if uid is None:
            raise LookupError(f"no {self.unit_key} header")
        # plain ASCII digits, the common form, need no regular expression
        if not (uid.isdigit() and uid.isascii() and len(uid) <= 64):
            uid = uid.strip(" \t")
            if not INTEGER.fullmatch(uid):
                raise ValueError(
                    f"{self.unit_key} {uid[:32]!r} is not an integer"
                )
        uid = int(uid)
        if 1 <= uid <= 100:
            return "s1"
        if 101 <= uid <= 200:
            return "s2"
        return "s3"
