"""Shared pytest configuration: Hypothesis profiles, and the time budget of `make fuzz`.

`default` keeps `make test` fast; `ci-fuzz` is the small fixed budget CI spends on every
submission (`make fuzz-ci`: one derandomized run per target); `fuzz` is for long local runs
(`make fuzz`): each target gets an equal share of FUZZ_MINUTES (default 20) and spends it on
fresh Hypothesis runs ("rounds") of the profile's examples, one after another, printing a
progress line as it starts and as it ends. Hypothesis itself has no time limit, and one long run
of a slow target (the room state machine) took well over the whole budget; rounds of a fixed
size stop on time: a target starts another round only if one more like the last still fits.

The fuzz targets reuse the in-memory harness and the property bodies in tests/tunnelproto
(harness.py, core_properties.py), so that directory goes on sys.path.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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
# Examples per round (each target takes its share of this, as in ci-fuzz), sized so a round
# of the slowest target lasts about a minute on two cores.
settings.register_profile(
    "fuzz", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "default")
settings.load_profile(PROFILE)

#: The whole `make fuzz` run, shared equally by the targets.
FUZZ_MINUTES = float(os.environ.get("FUZZ_MINUTES", "20"))

_targets: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    _targets[:] = [item.nodeid for item in items]


def _say(config: pytest.Config, line: str) -> None:
    # Straight to the terminal: pytest captures a test's own output (fd 1 and 2) until it ends.
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(line, file=sys.stderr, flush=True)


@pytest.fixture
def fuzz_rounds(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], None], int], None]]:
    """Run a @given target of `examples` examples: once, or (profile `fuzz`) in rounds until
    its share of the budget is spent."""
    name = request.node.nodeid.split("::", 1)[-1]
    number = _targets.index(request.node.nodeid) + 1 if request.node.nodeid in _targets else 0
    timed = PROFILE == "fuzz"
    share = FUZZ_MINUTES * 60 / max(1, len(_targets))

    def run(target: Callable[[], None], examples: int) -> None:
        started = time.monotonic()
        rounds = 0
        if timed:
            _say(request.config, f"\nfuzz {number}/{len(_targets)} {name}: up to {share:.0f} s ...")
        try:
            while True:
                began = time.monotonic()
                target()
                rounds += 1
                now = time.monotonic()
                # Stop when another round like this one would not fit in the share.
                if not timed or (now - started) + (now - began) > share:
                    break
        finally:
            if timed:
                elapsed = time.monotonic() - started
                _say(
                    request.config,
                    f"fuzz {number}/{len(_targets)} {name}: {rounds} round(s) x {examples:,} "
                    f"examples in {elapsed:.0f} s"
                )

    yield run
