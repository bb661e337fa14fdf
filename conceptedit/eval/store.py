"""A result store that survives crashes: one SQLite row per finished (model, edit, prompt set,
case, seed), committed as it finishes. ``kill -9`` followed by the same command resumes where it
stopped, with no lost and no duplicated rows (the key is the primary key). Several processes
(``accelerate launch``) write to the same file through SQLite's WAL journal and busy timeout."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptedit.errors import ConceptEditError

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    model TEXT NOT NULL, edit TEXT NOT NULL, prompt_set TEXT NOT NULL,
    case_number INTEGER NOT NULL, seed INTEGER NOT NULL,
    prompt TEXT NOT NULL, role TEXT, concept TEXT, labels TEXT,
    image_key TEXT NOT NULL, image_path TEXT NOT NULL, per_image TEXT NOT NULL,
    PRIMARY KEY (model, edit, prompt_set, case_number, seed)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ImageRow:
    model: str
    edit: str
    prompt_set: str
    case_number: int
    seed: int
    prompt: str
    role: str
    concept: str
    labels: dict[str, str]
    image_key: str
    image_path: str
    per_image: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.model, self.edit, self.prompt_set, self.case_number, self.seed)


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=120000")
        for attempt in range(50):  # the journal-mode switch fails at once (no busy wait) while another opens
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def done_keys(self) -> set[tuple[str, str, str, int, int]]:
        cur = self.conn.execute("SELECT model, edit, prompt_set, case_number, seed FROM images")
        return {tuple(r) for r in cur.fetchall()}  # type: ignore[misc]

    def check_present(self) -> None:
        """SQLite keeps writing to a deleted file (its open handle survives), so results would vanish
        silently: stop with a clear error when the database is gone."""
        if not self.path.is_file():
            raise ConceptEditError(
                f"the results database {self.path} disappeared (was the output folder deleted or moved?); "
                "stopped so that no results go to a deleted file; run the same command to start again"
            )

    def add(self, rows: list[ImageRow]) -> None:
        """Insert finished rows in one transaction; a row already present is kept as it was."""
        self.check_present()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.model,
                        r.edit,
                        r.prompt_set,
                        r.case_number,
                        r.seed,
                        r.prompt,
                        r.role,
                        r.concept,
                        json.dumps(r.labels),
                        r.image_key,
                        r.image_path,
                        json.dumps(r.per_image),
                    )
                    for r in rows
                ],
            )

    def rows(self) -> Iterator[ImageRow]:
        cur = self.conn.execute(
            "SELECT model, edit, prompt_set, case_number, seed, prompt, role, concept, labels, image_key, "
            "image_path, per_image FROM images ORDER BY model, edit, prompt_set, case_number, seed"
        )
        for r in cur:
            yield ImageRow(*r[:8], json.loads(r[8] or "{}"), r[9], r[10], json.loads(r[11]))

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.check_present()
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default
