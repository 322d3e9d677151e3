"""Fixture plugins: each area keeps its fixtures in its own module so they stay small and owned."""

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.plant", "tests.fixtures.postgres"]
