pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.mirror_fixtures",
    "tests.support.client_fixtures",
]
