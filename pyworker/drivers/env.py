"""IDC and ZONE: this gateway's data centre and zone, from the environment.

As in MOSN, the config lists environment variable names and the first one
set to a non-empty value wins; it is read once, when the config is loaded::

    {"meta_data_key": "IDC",
     "config": {"idc_env_name_list": ["IDC", "MY_IDC"]}}
    {"meta_data_key": "ZONE", "config": {"zone_env_name_list": ["ZONE"]}}

``"env": "NAME"`` (or a list) is accepted as a shorter spelling. With no
list at all, the variable named like the driver (``IDC``, ``ZONE``) is
read. None of them set is a config error, as in MOSN.
"""

import os

from pyworker.api import MetadataDriver
from pyworker.registry import register_driver


class EnvDriver(MetadataDriver):
    """A constant per process, read from the first set environment variable."""

    list_key = ""  # MOSN's config key for the list of variable names
    default_env = ""

    def init(self, config):
        names = config.get(self.list_key)
        if names is None:
            names = config.get("env", self.default_env)
        if isinstance(names, str):
            names = [names]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(name, str) and name for name in names)
        ):
            raise ValueError(
                f"{self.list_key} must be a non-empty list of "
                f"environment variable names, not {names!r}"
            )
        for name in names:
            value = os.environ.get(name)
            if value:
                self.value = value
                return
        raise LookupError(
            f"none of the environment variables {', '.join(names)} is set"
        )

    def build_metadata(self, ctx, headers, buf, trailers):
        return self.value


@register_driver("IDC")
class IdcDriver(EnvDriver):
    list_key = "idc_env_name_list"
    default_env = "IDC"


@register_driver("ZONE")
class ZoneDriver(EnvDriver):
    list_key = "zone_env_name_list"
    default_env = "ZONE"
