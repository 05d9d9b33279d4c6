"""Concurrent writers are served, not refused: a write transaction waits for the lock.

On SQLite a deferred transaction that reads and then writes fails at once with
"database is locked" (whatever the busy timeout) when another writer committed after
its read; the API answered 503 to ordinary concurrent use. Writers now take the lock at
BEGIN, so they queue. The same workload must also pass on PostgreSQL.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlmodel import col, select

from duetide.storage import db
from duetide.storage.models import Task
from tests.integration.conftest import auth_headers

WRITERS, ROUNDS = 8, 6


def test_concurrent_read_then_write_requests_all_succeed(client):
    # A user per writer: the per-user write budget is not what this test is about.
    users = [auth_headers(f"writer-{i}") for i in range(WRITERS)]
    ids = [client.post("/tasks", json={"title": "t"}, headers=h).json["id"] for h in users]

    def writer(task_id: str, headers: dict[str, str]) -> list[int]:
        own = client.application.test_client()  # a client per thread, one app, as gthread
        statuses = []
        for round_ in range(ROUNDS):
            statuses.append(
                own.patch(
                    f"/tasks/{task_id}", json={"title": f"r{round_}"}, headers=headers
                ).status_code
            )
            statuses.append(own.post(f"/tasks/{task_id}/complete", headers=headers).status_code)
            statuses.append(own.post(f"/tasks/{task_id}/reopen", headers=headers).status_code)
        return statuses

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(writer, ids, users))

    refused = [s for statuses in results for s in statuses if s != 200]
    assert refused == [], f"{len(refused)} of {WRITERS * ROUNDS * 3} writes refused: {refused}"
    with db.session_scope(read_only=True) as session:
        titles = session.exec(select(Task.title).where(col(Task.id).in_(ids))).all()
    assert len(titles) == len(ids) and set(titles) == {f"r{ROUNDS - 1}"}
