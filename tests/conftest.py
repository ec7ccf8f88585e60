"""Shared fixtures. The SMTP relays and test-sealed messages live in tests/smtp_fixtures.py."""

pytest_plugins = ["tests.smtp_fixtures"]
