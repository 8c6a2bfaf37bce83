"""Makes the in-memory harness (harness.py beside this file) importable as `harness`.

Tests run with --import-mode=importlib and there are no __init__.py files, so a sibling module
is only importable once its directory is on sys.path; fuzz/conftest.py does the same.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
