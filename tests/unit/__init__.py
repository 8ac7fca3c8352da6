"""Unit tests (a package: test module names may repeat those of the
integration tests, e.g. test_discovery)."""
