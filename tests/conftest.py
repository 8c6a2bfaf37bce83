"""Shared pytest configuration: Hypothesis profiles.

`default` keeps `make test` fast; `ci-fuzz` is the small fixed budget CI spends on every
submission; `fuzz` is for long local runs (`make fuzz`).
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# Test-support modules shared by several test directories (no __init__.py under tests/).
sys.path.insert(0, str(Path(__file__).parent / "_support"))

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
