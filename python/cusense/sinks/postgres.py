"""PostgreSQL sink: one transaction per epoch, committed together with the epoch id.

Tables (schema ``cusense`` by default, created on demand, see docs/postgres.md):
``windows`` (one column per aggregation, created from the first non-empty windows DataFrame),
``alarms``, ``silence``, ``late_records``, ``dead_letters``, ``fleet_status``, ``epochs``.
The event tables are partitioned by day (UTC) on their event-time column.

Exactly once: ``write(out)`` loads every row of the epoch inside one transaction that
``commit(epoch)`` closes after inserting the ``epochs`` row, so the rows and the epoch id become
visible together or not at all; an epoch already in ``epochs`` is skipped by ``write`` and
``commit``. Rows go in with binary ``COPY`` (into temporary staging tables, then
``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` for the tables with a key).

Values: NaN and NaT become NULL (SQL aggregates skip NULL, whereas a NaN makes ``max``/``avg``
NaN); times are truncated (floored) to microseconds, timestamptz's resolution.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .base import EpochOutput, SinkUnavailableError

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9
# Binary COPY sends a timestamptz as int64 microseconds since 2000-01-01 UTC (PostgreSQL's
# on-the-wire format since integer datetimes became the only option): times go in as such
# integers, vectorised in numpy instead of one Python datetime per value.
_PG_EPOCH_US = 946_684_800 * 10**6

TIMESTAMPTZ = "timestamp with time zone"   # the spellings of format_type(), to compare with it
DOUBLE = "double precision"
BIGINT = "bigint"
INTEGER = "integer"
BOOLEAN = "boolean"
TEXT = "text"
BYTEA = "bytea"
_COPY_SLICE_ROWS = 65_536
# How each column type travels in binary COPY (timestamptz as int8, see _PG_EPOCH_US).
_COPY_TYPE = {TIMESTAMPTZ: "int8", DOUBLE: "float8", BIGINT: "int8", INTEGER: "int4",
              BOOLEAN: "bool", TEXT: "text", BYTEA: "bytea"}


class SchemaMismatchError(RuntimeError):
    """The existing ``windows`` table does not have the columns of the epoch's windows (the
    pipeline's aggregations changed). Not retryable: drop or rename the table, or use another
    schema."""


class _Table:
    """A fixed-layout table: its columns (name, type), the EpochOutput field it comes from,
    its upsert key (None: plain COPY, exactly once through the epoch rule) and its day
    partition column (None: not partitioned)."""

    def __init__(self, name, field, columns, key=None, partition_by=None, not_loaded=()):
        self.name, self.field, self.columns = name, field, columns
        self.key, self.partition_by = key, partition_by
        self.not_loaded = not_loaded     # columns filled by the server (defaults)

    @property
    def loaded(self):
        return [(c, t) for c, t in self.columns if c not in self.not_loaded]


WINDOW_KEY_COLUMNS = [("device", TEXT), ("channel", TEXT), ("window_start", TIMESTAMPTZ),
                      ("window_end", TIMESTAMPTZ), ("update_seq", INTEGER)]
WINDOW_KEY = ("device", "channel", "window_start", "update_seq")

ALARMS = _Table("alarms", "alarms",
                [("device", TEXT), ("channel", TEXT), ("timestamp", TIMESTAMPTZ),
                 ("value", DOUBLE), ("detector", TEXT), ("score", DOUBLE)],
                key=("device", "channel", "detector", "timestamp"), partition_by="timestamp")
SILENCE = _Table("silence", "silence",
                 [("device", TEXT), ("channel", TEXT), ("last_seen", TIMESTAMPTZ),
                  ("silent_since", TIMESTAMPTZ), ("back_at", TIMESTAMPTZ), ("back", BOOLEAN)],
                 partition_by="silent_since")
LATE = _Table("late_records", "late",
              [("device", TEXT), ("channel", TEXT), ("timestamp", TIMESTAMPTZ), ("value", DOUBLE)],
              partition_by="timestamp")
DEAD_LETTERS = _Table("dead_letters", "dead_letters",
                      [("topic", TEXT), ("partition", BIGINT), ("offset", BIGINT),
                       ("payload", BYTEA), ("reason", TEXT), ("received_at", TIMESTAMPTZ)],
                      partition_by="received_at", not_loaded=("received_at",))
FLEET_STATUS = _Table("fleet_status", "status",
                      [("device", TEXT), ("status", TEXT), ("since", TIMESTAMPTZ),
                       ("last_seen", TIMESTAMPTZ), ("epoch", BIGINT)], key=("device",))
EVENT_TABLES = (ALARMS, SILENCE, LATE)      # partitioned by event time, like windows


def _ident(*names):
    return sql.Identifier(*names)


def _column_list(names):
    return sql.SQL(", ").join(map(_ident, names))


def sql_type_of(series: pd.Series) -> str:
    """The column type a DataFrame column gets in ``windows``."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return TIMESTAMPTZ
    if pd.api.types.is_bool_dtype(dtype):
        return BOOLEAN
    if pd.api.types.is_integer_dtype(dtype):
        return BIGINT
    if pd.api.types.is_float_dtype(dtype):
        return DOUBLE
    if pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return TEXT
    raise TypeError(f"column {series.name!r}: no PostgreSQL type for dtype {dtype}")


def _time_ns(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ns since 1970 UTC, NaT mask); naive times are taken as UTC."""
    index = pd.DatetimeIndex(series)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns").asi8, np.asarray(index.isna())


def _copy_values(series: pd.Series, sql_type: str) -> list:
    """The column as Python values for binary COPY, NULL (None) for NaN/NaT/NA."""
    if sql_type == TIMESTAMPTZ:
        ns, missing = _time_ns(series)
        values = (ns // 1000 - _PG_EPOCH_US).astype(object)   # floor to microseconds
        values[missing] = None
        return values.tolist()
    if sql_type == TEXT and isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    return series.to_numpy(dtype=object, na_value=None).tolist()


def _day_name(day: int) -> str:
    return str(np.datetime64(int(day), "D")).replace("-", "")


class PostgresSink:
    """Writes epochs to PostgreSQL, exactly once (see the module docstring and
    docs/postgres.md). ``retention_days``: keep the partitions of the last that many days of
    event time (None: keep everything)."""

    def __init__(self, dsn: str, schema: str = "cusense", retention_days: float | None = None,
                 connect_timeout_s: float = 5):
        if retention_days is not None and retention_days <= 0:
            raise ValueError("retention_days must be positive")
        self.dsn = dsn
        self.schema = schema
        self.retention_days = retention_days
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None
        self._pending: EpochOutput | None = None     # written, transaction open, not committed
        self._row_counts: dict = {}
        self._skipped: int | None = None             # epoch write() found already committed

    # --- protocol ------------------------------------------------------------------------------
    def open(self) -> None:
        with self._server_call():
            self._connection()

    def committed_epoch(self) -> int:
        with self._server_call():
            conn = self._connection()
            row = conn.execute(sql.SQL("SELECT coalesce(max(epoch), -1) FROM {}").format(
                _ident(self.schema, "epochs"))).fetchone()
            assert row is not None   # an aggregate returns one row
            epoch = row[0]
            if self._pending is None:
                conn.rollback()       # end the read-only transaction: never idle in one
            return int(epoch)

    def write(self, out: EpochOutput) -> None:
        with self._server_call():
            conn = self._connection()
            self._abandon_pending()
            self._skipped = None
            if self._is_committed(conn, out.epoch):
                conn.rollback()
                self._skipped = out.epoch       # a replay after a crash: already in
                return
            tables = self._prepare_storage(conn, out)
            self._row_counts = self._load(conn, out, tables)
            self._pending = out

    def commit(self, epoch: int) -> None:
        if self._skipped == epoch:
            self._skipped = None
            return
        if self._pending is None or self._pending.epoch != epoch:
            raise RuntimeError(f"commit({epoch}) without a successful write of epoch {epoch}")
        out = self._pending
        with self._server_call():
            conn = self._connection()
            try:
                conn.execute(sql.SQL(
                    "INSERT INTO {} (epoch, watermark, source_positions, row_counts) "
                    "VALUES (%s, %s, %s, %s)").format(_ident(self.schema, "epochs")),
                    (out.epoch, out.watermark, Jsonb(out.source_positions),
                     Jsonb(self._row_counts)))
            except psycopg.errors.UniqueViolation:
                # Another writer committed this epoch meanwhile: its rows are in, drop ours.
                conn.rollback()
            else:
                conn.commit()
            self._pending = None

    def close(self) -> None:
        self._drop_connection()     # an epoch written and not committed is rolled back

    # --- connection ----------------------------------------------------------------------------
    @contextmanager
    def _server_call(self):
        """Server loss (connection refused or broken, restart, shutdown, ...) becomes
        SinkUnavailableError with the connection dropped, so the next call reconnects; any
        other error rolls the epoch back and propagates."""
        try:
            yield
        except psycopg.OperationalError as e:
            self._drop_connection()
            raise SinkUnavailableError(f"PostgreSQL sink: {e}".strip()) from e
        except BaseException:
            self._abandon_pending()
            raise

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.dsn, connect_timeout=max(1, round(self.connect_timeout_s)),
                                   application_name="cusense")
            try:
                conn.execute("SET TIME ZONE 'UTC'")
                # Staging tables hold a whole epoch: keep them in memory (only settable
                # before the session's first temporary table).
                conn.execute("SET temp_buffers = '256MB'")
                self._create_fixed_tables(conn)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn, self._pending = self._conn, None, None
        if conn is not None:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            conn.close()

    def _abandon_pending(self) -> None:
        """Rolls back the open transaction (an epoch written and not committed, or a failed
        statement), keeping the connection."""
        self._pending = None
        conn = self._conn
        if conn is not None and not conn.closed and \
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.OperationalError:
                self._drop_connection()
                raise

    # --- DDL -----------------------------------------------------------------------------------
    def _create_fixed_tables(self, conn) -> None:
        s = self.schema
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_ident(s)))
        for table in (ALARMS, SILENCE, LATE, DEAD_LETTERS, FLEET_STATUS):
            columns = []
            for name, type_ in table.columns:
                column = sql.SQL("{} {}").format(_ident(name), sql.SQL(type_))
                if table.key and name in table.key or name == table.partition_by:
                    column += sql.SQL(" NOT NULL")
                if name in table.not_loaded:
                    column += sql.SQL(" DEFAULT now()")
                columns.append(column)
            if table.key:
                columns.append(sql.SQL("PRIMARY KEY ({})").format(_column_list(table.key)))
            partitioning = sql.SQL(" PARTITION BY RANGE ({})").format(
                _ident(table.partition_by)) if table.partition_by else sql.SQL("")
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}){}").format(
                _ident(s, table.name), sql.SQL(", ").join(columns), partitioning))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (epoch bigint PRIMARY KEY, "
            "committed_at timestamptz NOT NULL DEFAULT now(), watermark bigint, "
            "source_positions jsonb, row_counts jsonb)").format(_ident(s, "epochs")))

    def _table_columns(self, conn, table: str) -> dict | None:
        """{column: type} of an existing table, None when it does not exist."""
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (sql.Identifier(self.schema, table).as_string(conn),)).fetchall()
        return dict(rows) if rows else None

    def _ensure_windows_table(self, conn, windows: pd.DataFrame) -> list | None:
        """The windows table's columns [(name, type)], created from ``windows`` if missing
        (None while neither exists); SchemaMismatchError when they differ."""
        existing = self._table_columns(conn, "windows")
        if windows.empty:
            return None if existing is None else list(existing.items())
        missing = [c for c, _ in WINDOW_KEY_COLUMNS if c not in windows.columns]
        if missing:
            raise ValueError(f"windows DataFrame lacks the columns {missing}")
        key_names = {c for c, _ in WINDOW_KEY_COLUMNS}
        wanted = WINDOW_KEY_COLUMNS + [(c, sql_type_of(windows[c])) for c in windows.columns
                                       if c not in key_names]
        if existing is not None:
            self._check_windows_columns(existing, wanted)
            return list(existing.items())
        columns = [sql.SQL("{} {}{}").format(_ident(c), sql.SQL(t),
                                            sql.SQL(" NOT NULL" if c in key_names else ""))
                   for c, t in wanted]
        table = _ident(self.schema, "windows")
        conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({})) "
                             "PARTITION BY RANGE (window_start)").format(
            table, sql.SQL(", ").join(columns), _column_list(WINDOW_KEY)))
        # The last emission of every window (its highest update_seq).
        conn.execute(sql.SQL(
            "CREATE OR REPLACE VIEW {} AS SELECT DISTINCT ON (device, channel, window_start) * "
            "FROM {} ORDER BY device, channel, window_start, update_seq DESC").format(
            _ident(self.schema, "windows_latest"), table))
        return wanted

    def _check_windows_columns(self, existing: dict, wanted_columns: list) -> None:
        wanted = dict(wanted_columns)
        not_in_table = [f"{c} ({t})" for c, t in wanted.items() if c not in existing]
        not_in_epoch = [f"{c} ({t})" for c, t in existing.items() if c not in wanted]
        other_type = [f"{c} (table {existing[c]}, epoch {t})" for c, t in wanted.items()
                      if c in existing and existing[c] != t]
        if not_in_table or not_in_epoch or other_type:
            parts = [f"{label}: {', '.join(cols)}" for label, cols in
                     (("columns not in the table", not_in_table),
                      ("table columns not in the epoch", not_in_epoch),
                      ("columns of another type", other_type)) if cols]
            raise SchemaMismatchError(
                f"{self.schema}.windows does not match this epoch's windows: "
                f"{'; '.join(parts)}. The pipeline's aggregations changed since the table was "
                "created: drop or rename the table, or use another schema.")

    def _partitions(self, conn) -> dict[str, set[str]]:
        """{partitioned table: names of its partitions} in the schema."""
        rows = conn.execute(
            "SELECT parent.relname, child.relname FROM pg_inherits i "
            "JOIN pg_class parent ON parent.oid = i.inhparent "
            "JOIN pg_class child ON child.oid = i.inhrelid "
            "JOIN pg_namespace n ON n.oid = parent.relnamespace WHERE n.nspname = %s",
            (self.schema,)).fetchall()
        partitions: dict[str, set[str]] = {}
        for parent, child in rows:
            partitions.setdefault(parent, set()).add(child)
        return partitions

    def _prepare_storage(self, conn, out: EpochOutput) -> dict:
        """In a short transaction of its own, so that the epoch's transaction takes no table
        locks: creates the windows table if needed, drops expired partitions, creates the
        partitions of the days the epoch touches. Returns {table name: (columns, cutoff)}."""
        windows_columns = self._ensure_windows_table(conn, out.windows)
        now_ns = pd.Timestamp(conn.execute("SELECT now()").fetchone()[0]).value
        event_cutoff = dead_letter_cutoff = None
        if self.retention_days is not None:
            horizon = int(self.retention_days * NS_PER_DAY)
            dead_letter_cutoff = now_ns - horizon
            if out.watermark is not None:
                event_cutoff = int(out.watermark) - horizon
        existing = self._partitions(conn)
        plan = {}
        sources = [("windows", out.windows, "window_start", windows_columns)] + \
            [(t.name, getattr(out, t.field), t.partition_by, t.columns) for t in EVENT_TABLES]
        for name, frame, column, columns in sources:
            if columns is None:
                continue
            self._drop_expired(conn, name, existing.get(name, ()), event_cutoff)
            if not frame.empty:
                if column not in frame.columns:
                    raise ValueError(f"{name}: the DataFrame lacks the column {column!r}")
                ns, missing = _time_ns(frame[column])
                days = np.unique(ns[~missing] // NS_PER_DAY)
                if event_cutoff is not None:
                    days = days[(days + 1) * NS_PER_DAY > event_cutoff]
                self._create_partitions(conn, name, days, existing.get(name, ()))
            plan[name] = (columns, event_cutoff)
        self._drop_expired(conn, "dead_letters", existing.get("dead_letters", ()),
                           dead_letter_cutoff)
        # received_at is the load transaction's now(): today, or tomorrow past midnight.
        today = now_ns // NS_PER_DAY
        self._create_partitions(conn, "dead_letters", [today, today + 1],
                                existing.get("dead_letters", ()))
        conn.commit()
        return plan

    def _create_partitions(self, conn, table: str, days, existing) -> None:
        for day in days:
            name = f"{table}_p{_day_name(day)}"
            if name in existing:
                continue
            start = np.datetime64(int(day), "D")
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} "
                                 "FOR VALUES FROM ({}) TO ({})").format(
                _ident(self.schema, name), _ident(self.schema, table),
                sql.Literal(f"{start} 00:00:00+00"), sql.Literal(f"{start + 1} 00:00:00+00")))

    def _drop_expired(self, conn, table: str, partitions, cutoff_ns: int | None) -> None:
        """Drops the day partitions (named ``<table>_pYYYYMMDD``) whose upper bound is at or
        before ``cutoff_ns``; partitions named otherwise are left alone."""
        if cutoff_ns is None:
            return
        pattern = re.compile(re.escape(table) + r"_p(\d{8})$")
        for name in sorted(partitions):
            match = pattern.match(name)
            if not match:
                continue
            day = np.datetime64(f"{match[1][:4]}-{match[1][4:6]}-{match[1][6:]}", "D")
            upper_ns = (day + 1).astype("datetime64[ns]").astype(np.int64)
            if upper_ns <= cutoff_ns:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ident(self.schema, name)))

    # --- load ----------------------------------------------------------------------------------
    def _is_committed(self, conn, epoch: int) -> bool:
        return conn.execute(sql.SQL("SELECT 1 FROM {} WHERE epoch = %s").format(
            _ident(self.schema, "epochs")), (epoch,)).fetchone() is not None

    def _load(self, conn, out: EpochOutput, plan: dict) -> dict:
        """Loads the epoch's rows in the (open) epoch transaction; returns the row counts."""
        counts = {}
        if "windows" in plan:
            columns, cutoff = plan["windows"]
            counts["windows"] = self._upsert(conn, "windows", columns, WINDOW_KEY,
                                             self._keep(out.windows, "window_start", cutoff))
        else:
            counts["windows"] = 0
        for table in EVENT_TABLES:
            frame = self._keep(getattr(out, table.field), table.partition_by,
                               plan[table.name][1])
            if table.key:
                counts[table.name] = self._upsert(conn, table.name, table.columns, table.key,
                                                  frame)
            else:
                counts[table.name] = self._copy(conn, _ident(self.schema, table.name),
                                                table.columns, frame)
        counts["dead_letters"] = self._copy(conn, _ident(self.schema, "dead_letters"),
                                            DEAD_LETTERS.loaded, out.dead_letters)
        status = out.status.assign(epoch=out.epoch)
        counts["fleet_status"] = self._upsert(
            conn, "fleet_status", FLEET_STATUS.columns, FLEET_STATUS.key, status,
            only_if=sql.SQL(" WHERE {}.epoch <= EXCLUDED.epoch").format(
                _ident(self.schema, "fleet_status")))
        return counts

    @staticmethod
    def _keep(frame: pd.DataFrame, column: str, cutoff_ns: int | None) -> pd.DataFrame:
        """The rows whose day partition outlives the retention cutoff."""
        if cutoff_ns is None or frame.empty:
            return frame
        ns, missing = _time_ns(frame[column])
        return frame[missing | ((ns // NS_PER_DAY + 1) * NS_PER_DAY > cutoff_ns)]

    def _copy(self, conn, target, columns: list, frame: pd.DataFrame) -> int:
        """Binary COPY of ``frame``'s ``columns`` [(name, type)] into ``target``."""
        if frame.empty:
            return 0
        names = [c for c, _ in columns]
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise ValueError(f"{target.as_string(conn)}: the DataFrame lacks the columns {absent}")
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                    target, _column_list(names))) as copy:
                copy.set_types([_COPY_TYPE[t] for _, t in columns])
                # In slices: the Python values of a whole large epoch would take gigabytes.
                for first in range(0, len(frame), _COPY_SLICE_ROWS):
                    part = frame.iloc[first:first + _COPY_SLICE_ROWS]
                    for row in zip(*(_copy_values(part[c], t) for c, t in columns)):
                        copy.write_row(row)
        return len(frame)

    def _upsert(self, conn, table: str, columns: list, key: tuple, frame: pd.DataFrame,
                only_if=sql.SQL("")) -> int:
        """COPY into a temporary staging table, then one INSERT ... ON CONFLICT DO UPDATE: a
        row already there (a replayed or updated key) is replaced, never doubled."""
        if frame.empty:
            return 0
        # ON CONFLICT cannot update a row twice in one statement: the last duplicate wins,
        # duplicates counted after the truncation of times to microseconds.
        keys = pd.DataFrame({c: _time_ns(frame[c])[0] // 1000 if dict(columns)[c] == TIMESTAMPTZ
                             else frame[c] for c in key})
        frame = frame[~keys.duplicated(keep="last").to_numpy()]
        stage = _ident(f"stage_{table}")
        conn.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
            stage, _ident(self.schema, table)))
        self._copy(conn, stage, columns, frame)
        names = [c for c, _ in columns]
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
            _ident(self.schema, table), _column_list(names), _column_list(names), stage)
        updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(_ident(c))
                                     for c in names if c not in key)
        upsert = insert + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}{}").format(
            _column_list(key), updates, only_if)
        if table == "windows":
            # Windows are almost always new rows (replayed epochs are skipped whole), and a
            # plain INSERT into them runs about twice as fast as the upsert's speculative
            # insertion: try it first, and upsert when some key is already there.
            conn.execute("SAVEPOINT new_windows")
            try:
                conn.execute(insert)
            except psycopg.errors.UniqueViolation:
                conn.execute("ROLLBACK TO SAVEPOINT new_windows")
                conn.execute(upsert)
            else:
                conn.execute("RELEASE SAVEPOINT new_windows")
        else:
            conn.execute(upsert)
        return len(frame)
