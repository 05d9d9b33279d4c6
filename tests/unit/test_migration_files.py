"""Committed migrations are not changed: a database that ran one is stamped past it and
never runs it again, so what an edit adds never reaches it. 0012 and 0020 were changed
after databases had run them, which were then short of columns with nothing left to
run (an audit, 2026-12-07; repaired by 0025). A change goes in a new migration; a file
whose fingerprint must change anyway (to make it safe to run again) is pinned anew here,
saying why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from duetide.storage import migrate

VERSIONS = migrate.SCRIPTS / "versions"
PINNED = {
    "0001_initial_schema.py": "80c28d298521a5b8",
    "0002_series_history.py": "0041929439fafad8",
    "0003_preferences.py": "a5ea0e1476bfa59c",
    "0004_rate_windows.py": "54ccd30ea06df7fb",
    "0005_verified_targets.py": "5c782e4f4b1fadc2",
    "0006_processed_event_scope.py": "60501046dc01d963",
    "0007_series_nominal_start.py": "12931aa89caa9adc",
    "0008_reminder_task_index.py": "7a99c7b0effccd78",
    "0009_outbox_traceparent.py": "6d8713b77a5eb563",
    "0010_calendar_feed.py": "508e9cf840a72778",
    "0011_activity_log.py": "50d45a03af10722c",
    "0012_subscriptions.py": "423074f5f08d3355",
    "0013_missed_runs.py": "072e19d5f29e2ad6",
    "0014_task_owner_priority.py": "6d20db9e1edc3bb7",
    "0015_purge_indexes.py": "96934e127aef370f",
    "0016_idempotent_requests.py": "8a3359d19996e8b4",
    "0017_task_status_indexes.py": "0265cae06116b1f0",
    "0018_series_owner_created.py": "39fa95b501e47850",
    "0019_drop_prefix_indexes.py": "35379dad5dc88ff6",
    "0020_delivery_republished.py": "53111a0cec2a22f8",
    "0021_owner_and_series_order_indexes.py": "8af385c4aa9ebd44",
    "0022_activity_superseded.py": "5b28434f4ee33ffd",
    "0023_delivery_round_start.py": "15f27a4f529264e0",
    "0024_text_in_nfc.py": "52bbd20aca9c26e3",
    "0025_repair_edited_migrations.py": "b3f9dcaef0205162",
    "0026_outbox_unsent_index.py": "4135eddd5e04161b",
}
"""sha256 (first 16 hex digits) of each migration as committed. 0020's is of its version
whose column adds are safe to run again (`migrate.add_column_if_missing`)."""


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_committed_migrations_are_not_changed() -> None:
    changed = [
        name
        for name, pinned in PINNED.items()
        if (VERSIONS / name).exists() and fingerprint(VERSIONS / name) != pinned
    ]
    assert changed == [], f"{changed} changed after they were committed: add a new migration"


def test_every_migration_is_pinned() -> None:
    """A new migration is pinned once written (its fingerprint is in the message)."""
    files = {path.name: fingerprint(path) for path in VERSIONS.glob("*.py")}
    missing = {name: value for name, value in files.items() if name not in PINNED}
    assert missing == {}, f"pin these in tests/unit/test_migration_files.py: {missing}"
    assert set(PINNED) <= set(files), "a committed migration was removed"
