"""What a fleet operator asks the tables cusense serve keeps in PostgreSQL.

    python examples/fleet/query.py "host=127.0.0.1 user=postgres" [schema]
"""
from __future__ import annotations

import sys

import pandas as pd
import psycopg

QUERIES = {
    "devices that are not okay": """
        select device, status, since, last_seen from {s}.fleet_status
        where status <> 'ok' order by since""",
    "fleet status counts": """
        select status, count(*) as devices from {s}.fleet_status group by status order by status""",
    "latest window of the noisiest channels": """
        select device, channel, window_start, count, round(mean::numeric, 3) as mean, round(std::numeric, 3) as std
        from {s}.windows_latest
        where window_start = (select max(window_start) from {s}.windows)
        order by std desc nulls last limit 5""",
    "alarms per device": """
        select device, channel, detector, count(*) as alarms, max(score) as worst, max("timestamp") as last
        from {s}.alarms group by 1, 2, 3 order by alarms desc limit 10""",
    "silence episodes": """
        select device, channel, silent_since, back_at from {s}.silence
        where not back order by silent_since limit 10""",
    "late and dead-lettered": """
        select 'late' as kind, count(*) as n from {s}.late_records
        union all select 'dead letter: ' || reason, count(*) from {s}.dead_letters group by reason""",
    "epochs committed": """
        select count(*) as epochs, max(committed_at) as last_commit from {s}.epochs""",
}


def report(dsn: str, schema: str = "cusense") -> dict[str, pd.DataFrame]:
    results = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for title, sql in QUERIES.items():
            cur = conn.execute(sql.format(s=schema))
            results[title] = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    with pd.option_context("display.width", 140, "display.max_columns", 12):
        for title, frame in report(argv[0], *argv[1:2]).items():
            print(f"\n== {title} ==")
            print(frame.to_string(index=False) if len(frame) else "(none)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
