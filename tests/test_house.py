"""Conventions of the repository itself: what the code and the documents cite exists in it, and they
give reasons rather than ticket numbers or who asked."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from pgvote.paths import PROJECT_ROOT

TOP_LEVEL = ("db", "procedures", "partitions", "api", "migrations", "tests", "pgvote", "deploy", "docs", "scripts")
# a repository path: a top-level folder, then path characters, ending in a name with an extension or a
# slash (`deploy/postgrest-green` in a kubectl line is a Kubernetes name, not a path)
CITED_PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP_LEVEL)})/(?:[\w.-]+/)*(?:[\w-]+\.[\w.]+|))(?![\w/-])")
CITED_DOC = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")
WORK_WORDS = re.compile(r"\b(?:issue|ticket) ?#?\d+\b|\bthe lead\b|\.\./shared|§ ?\d", re.I)


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    names = [n for n in out.decode().split("\0") if n]
    suffixes = {".py", ".sql", ".md", ".sh", ".ini", ".conf", ".yaml", ".yml", ".toml", ".js", ".template", ""}
    return [PROJECT_ROOT / n for n in names if Path(n).suffix in suffixes and (PROJECT_ROOT / n).is_file()
            and not n.endswith(".png")]


def cited_path_exists(cited: str) -> bool:
    if any(mark in cited for mark in ("*", "NNNN", "<", "...")):
        return True  # a pattern, not a path
    path = PROJECT_ROOT / cited.rstrip("./")
    return path.exists() or any(PROJECT_ROOT.glob(cited.rstrip("./") + ".*"))


def test_every_repository_path_the_code_and_docs_cite_exists() -> None:
    tracked = {p.name for p in tracked_text_files()}
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        missing += [f"{path.relative_to(PROJECT_ROOT)}: {c}" for c in CITED_PATH.findall(text) if not cited_path_exists(c)]
        missing += [f"{path.relative_to(PROJECT_ROOT)}: {d}" for d in CITED_DOC.findall(text) if d not in tracked]
    assert missing == []


def test_code_and_docs_give_reasons_not_ticket_numbers_or_roles() -> None:
    found = [f"{path.relative_to(PROJECT_ROOT)}:{n}: {line.strip()}"
             for path in tracked_text_files() if path.name != "test_house.py"
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if WORK_WORDS.search(line)]
    assert found == []
