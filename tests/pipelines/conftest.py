from tests.workbench.conftest import built_store, store  # noqa: F401  (the same recorded store)
