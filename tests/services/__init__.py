"""Real services for integration tests, started once per session by pytest fixtures (see each module)."""
