"""Shared test set-up: float64 JAX (the oracle comparisons need it), keys, hypothesis profiles.

Tests that check the float32 path switch x64 off locally with the `float32` fixture.
"""

import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from experiments import enable_compile_cache

jax.config.update("jax_enable_x64", True)
enable_compile_cache()  # compiled programs persist across runs and workers (~/.cache)

# "ci" is the default: bounded example counts keep the suite inside its time budget.
settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def float32():
    """Run the test body with JAX's x64 mode off (the default float32 path)."""
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", True)


def pytest_collection_modifyitems(items):
    """Start the long tests first: those that run a study, then those that load a model, then
    the rest, each group in its usual order. Alone this changes nothing; with ``-n 2 --dist
    loadfile`` (`make test`) the two workers take whole files in this order, so the longest
    files do not start last and leave one worker idle at the end."""
    def rank(item):
        return 0 if item.get_closest_marker("study") else 1 if item.get_closest_marker("model") \
            else 2

    items.sort(key=rank)  # stable: the usual order inside each group
