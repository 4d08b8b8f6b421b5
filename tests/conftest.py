"""Shared pytest configuration of the test suite.

Only the registration of the suite's custom markers lives here. The vector fields that
several test files share are in ``fields.py`` (imported as ``from fields import ...``:
pytest puts ``tests/`` on ``sys.path`` itself). There are deliberately no fixtures here,
autouse or otherwise: each test file sets up what it needs.
"""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds; deselect with -m 'not slow'")
