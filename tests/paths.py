"""Where the repository is, for every test and helper (one definition; conftest re-exports it).

Importable as `paths` wherever tests/ is on sys.path: under pytest (tests/conftest.py puts it there)
and in bench/ scripts that add it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
