"""Shared pytest configuration: Hypothesis profiles.

`default` keeps `make test` fast; `ci-fuzz` is the small fixed budget CI spends on every
submission; `fuzz` is for long local runs (`make fuzz`).

The fuzz targets reuse the in-memory harness and the property bodies in tests/tunnelproto
(harness.py, core_properties.py), so that directory goes on sys.path.
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

_PROTO_TESTS = str(Path(__file__).resolve().parent.parent / "tests" / "tunnelproto")
if _PROTO_TESTS not in sys.path:
    sys.path.insert(0, _PROTO_TESTS)

# too_slow is about data generation time, which a loaded CI machine stretches; it finds no bug.
settings.register_profile(
    "default", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci-fuzz",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "fuzz", max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
