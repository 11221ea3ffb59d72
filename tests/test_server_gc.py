"""The inference worker and the garbage collector (its own module: no other server may run meanwhile)."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.app import create_app


def test_the_startup_heap_is_frozen_while_serving_and_released_after(tiny_export):
    """Once the engine is loaded, the worker hides the heap from the collector (gc.freeze: a full collection
    then skips it) and gives it back when the server stops, so that an app and its engine can be collected."""
    lm = SparseLM.load(tiny_export)
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(lm, "tiny")) as c:
        assert c.get("/health").status_code == 200
        assert gc.get_freeze_count() > 10_000  # torch's import alone makes ~170k objects
    assert gc.get_freeze_count() == 0
