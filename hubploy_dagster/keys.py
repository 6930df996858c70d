"""Asset keys, groups and pools of the per-hub graph, named once: `<hub>/image` -> `<hub>/staging` -> `<hub>/prod`."""

import re

import dagster as dg

# The environments are the library's (hubploy_dagster.settings); imported here for upstream_of, and still
# imported from here by modules of the Dagster layer.
from hubploy_dagster.settings import ENVIRONMENTS


def group_name(hub_name: str) -> str:
    """Dagster group names allow only letters, digits and underscores; hub names often have dashes."""
    return re.sub(r"[^A-Za-z0-9_]", "_", hub_name)


def image_key(hub_name: str) -> dg.AssetKey:
    return dg.AssetKey([hub_name, "image"])


def release_key(hub_name: str, env: str) -> dg.AssetKey:
    return dg.AssetKey([hub_name, env])


def upstream_of(env: str) -> str:
    """prod promotes what staging ran; staging deploys the image."""
    index = ENVIRONMENTS.index(env)
    return "image" if index == 0 else ENVIRONMENTS[index - 1]


def hub_pool(hub_name: str) -> str:
    """One concurrency pool per hub: two steps touching the same hub never run at once."""
    return f"hub-{hub_name}"
