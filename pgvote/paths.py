"""Where the project's SQL and configuration live."""
from __future__ import annotations

import os
from pathlib import Path

#: The checkout (or unpacked source tree) that holds db/, procedures/ and migrations/.
PROJECT_ROOT = Path(os.environ.get("PGVOTE_ROOT", Path(__file__).resolve().parent.parent))
DB_DIR = PROJECT_ROOT / "db"
PROCEDURES_DIR = PROJECT_ROOT / "procedures"
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
