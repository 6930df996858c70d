"""Continuous deployment of JupyterHubs, hubploy-compatible, as Dagster assets."""
