"""Asset keys, groups and pools of the per-hub graph, named once: `<hub>/image` -> `<hub>/<env>` for each
environment of the chain, in promotion order (`<hub>/staging` -> `<hub>/prod` by default)."""

import re

import dagster as dg


def group_name(hub_name: str) -> str:
    """Dagster group names allow only letters, digits and underscores; hub names often have dashes."""
    return re.sub(r"[^A-Za-z0-9_]", "_", hub_name)


def image_key(hub_name: str) -> dg.AssetKey:
    return dg.AssetKey([hub_name, "image"])


def release_key(hub_name: str, env: str) -> dg.AssetKey:
    return dg.AssetKey([hub_name, env])


def hub_pool(hub_name: str) -> str:
    """One concurrency pool per hub: two steps touching the same hub never run at once."""
    return f"hub-{hub_name}"
