"""The adapter registry: each adapter is a plain peft directory plus `ragtune.json`, and a row in Postgres.

The directory is what a generator loads (transformers + peft, or vLLM with `--enable-lora`); `ragtune.json`
records what the peft config cannot: the exact base (a GGUF file name is lost in `base_model_name_or_path`),
the data's sha256, row count, hyper-parameters and eval losses. The `adapters` table holds the same record so
every app worker sees every adapter, and can skip one trained on another base.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METADATA_FILE = "ragtune.json"
# The generation layer serves adapters by folder name; this is the rule it accepts (and vLLM-friendly).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class AdapterNotFound(LookupError):
    """No adapter of that name is registered."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"adapter name {name!r}: use 1-64 letters, digits, '-' or '_' (first a letter or digit)")
    return name


@dataclass
class AdapterRecord:
    name: str
    base_model: str
    path: str
    data_sha256: str | None = None
    rows: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _clean_float(value: float | None) -> float | None:
    return None if value is None or value != value else float(value)  # NaN is not valid JSON


class AdapterRegistry:
    """Adapters under `adapters_dir`, mirrored in the `adapters` table when a psycopg pool is given."""

    def __init__(self, adapters_dir: Path, pool: Any | None = None) -> None:
        self.adapters_dir = Path(adapters_dir)
        self.pool = pool

    def path_for(self, name: str) -> Path:
        return self.adapters_dir / check_name(name)

    def checkpoint_dir(self, name: str) -> Path:
        return self.adapters_dir / ".checkpoints" / check_name(name)

    def register(self, record: AdapterRecord) -> AdapterRecord:
        """Write `ragtune.json` next to the peft files and upsert the table row."""
        check_name(record.name)
        record.eval_loss_before = _clean_float(record.eval_loss_before)
        record.eval_loss_after = _clean_float(record.eval_loss_after)
        directory = Path(record.path)
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {record.name!r}: no adapter_config.json in {directory}")
        (directory / METADATA_FILE).write_text(json.dumps(record.to_json(), indent=2) + "\n")
        if self.pool is not None:
            from psycopg.types.json import Jsonb

            with self.pool.connection() as conn:
                conn.execute(
                    """
                    INSERT INTO adapters (name, base_model, path, data_sha256, rows, hyperparameters,
                                          eval_loss_before, eval_loss_after, metrics, created_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (name) DO UPDATE SET
                        base_model = EXCLUDED.base_model, path = EXCLUDED.path,
                        data_sha256 = EXCLUDED.data_sha256, rows = EXCLUDED.rows,
                        hyperparameters = EXCLUDED.hyperparameters,
                        eval_loss_before = EXCLUDED.eval_loss_before, eval_loss_after = EXCLUDED.eval_loss_after,
                        metrics = EXCLUDED.metrics, created_at = EXCLUDED.created_at
                    """,
                    (
                        record.name,
                        record.base_model,
                        record.path,
                        record.data_sha256,
                        record.rows,
                        Jsonb(record.hyperparameters),
                        record.eval_loss_before,
                        record.eval_loss_after,
                        Jsonb(record.metrics),
                        record.created_at,
                    ),
                )
        log.info("registered adapter %s (%s)", record.name, record.path)
        return record

    def _local(self) -> dict[str, AdapterRecord]:
        found: dict[str, AdapterRecord] = {}
        if not self.adapters_dir.is_dir():
            return found
        for meta in sorted(self.adapters_dir.glob(f"*/{METADATA_FILE}")):
            try:
                record = AdapterRecord.from_json(json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring %s: %s", meta, exc)
                continue
            found[record.name] = record
        return found

    def _rows(self, name: str | None = None) -> dict[str, AdapterRecord]:
        if self.pool is None:
            return {}
        query = (
            "SELECT name, base_model, path, data_sha256, rows, hyperparameters, eval_loss_before, eval_loss_after,"
            " metrics, created_at FROM adapters"
        )
        params: tuple[Any, ...] = ()
        if name is not None:
            query += " WHERE name = %s"
            params = (name,)
        with self.pool.connection() as conn:
            rows = conn.execute(query + " ORDER BY name", params).fetchall()
        found = {}
        for row in rows:
            values = list(row)
            values[9] = values[9].isoformat(timespec="seconds")
            found[values[0]] = AdapterRecord(*values)
        return found

    def list(self, base_model: str | None = None) -> list[AdapterRecord]:
        """Every adapter known to the table or on disk (the table wins), optionally only those for `base_model`."""
        merged = {**self._local(), **self._rows()}
        records = sorted(merged.values(), key=lambda r: r.name)
        return [r for r in records if base_model is None or r.base_model == base_model]

    def get(self, name: str) -> AdapterRecord:
        check_name(name)
        record = self._rows(name).get(name) or self._local().get(name)
        if record is None:
            raise AdapterNotFound(f"no adapter named {name!r}")
        return record

    def delete(self, name: str) -> AdapterRecord:
        """Remove the table row, the adapter directory and any leftover checkpoints."""
        record = self.get(name)
        if self.pool is not None:
            with self.pool.connection() as conn:
                conn.execute("DELETE FROM adapters WHERE name = %s", (name,))
        directory = Path(record.path)
        expected = self.path_for(name)
        for target in {directory, expected}:
            if target.is_dir() and (target / "adapter_config.json").is_file():
                shutil.rmtree(target)
        shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)
        log.info("deleted adapter %s", name)
        return record
