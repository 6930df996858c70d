"""The per-hub asset graph: `<hub>/image` -> `<hub>/staging` -> `<hub>/prod`, one group per hub.

The graph is built from the hubs the deployment repository holds when the code location loads; the keys
read as the operator thinks of them ("datahub / staging"), and the lineage is the promotion path.
"""

from __future__ import annotations

import re

import dagster as dg

from hubploy_dagster.deployment import Hub

ENVIRONMENTS = ("staging", "prod")


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


def hub_asset_specs(hub: Hub) -> list[dg.AssetSpec]:
    group = group_name(hub.name)
    specs = [
        dg.AssetSpec(
            image_key(hub.name),
            group_name=group,
            kinds={"docker"},
            description=f"The user image(s) of hub {hub.name}, tagged by the last commit touching the image folder.",
            metadata={"hub_path": hub.path, "images": [image.name for image in hub.images()]},
        )
    ]
    for env in ENVIRONMENTS:
        specs.append(
            dg.AssetSpec(
                release_key(hub.name, env),
                group_name=group,
                kinds={"helm", "kubernetes"},
                deps=[dg.AssetKey([hub.name, upstream_of(env)])],
                description=f"The {env} Helm release of hub {hub.name}.",
                metadata={
                    "release": hub.release_name(env),
                    "namespace": hub.namespace(env),
                    **({"url": dg.MetadataValue.url(hub.url(env) or "")} if hub.url(env) else {}),
                },
            )
        )
    return specs
