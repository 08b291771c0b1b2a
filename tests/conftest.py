"""Fixtures come as plugins, one concern per module (tests/fixtures/); shared helpers are in tests/helpers.py."""
pytest_plugins = ["fixtures.stack", "fixtures.api", "fixtures.ha"]
