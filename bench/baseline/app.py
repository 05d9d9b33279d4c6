"""The baseline of bench/api_mix.py: the four endpoints of its request mix as a developer
would write them by hand with FastAPI and SQLModel, nothing more.

Same tables as duetide where the mix touches them (`task`, and `task_tag` rows for the
tags), same indexes on them, same HS256 bearer tokens (JWT_SECRET), same page size (50)
and keyset paging by (created_at, id). Plain sync endpoints (FastAPI runs them on its
thread pool) with one SQLModel session per request on psycopg 3, in a pool of 10.
Served with `uvicorn bench.baseline.app:app --workers 2`.

Not here, because the mix does not need them: series, reminders (duetide creates none on
these tasks: a user without preferences has no default reminders), events, rate limits.

    DATABASE_URL=postgresql+psycopg://... JWT_SECRET=... python -m bench.baseline.app
creates the tables. (No `from __future__ import annotations`: SQLModel reads the
relationship's annotation at class creation.)
"""

import base64
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Literal, Self, get_args

import jwt
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints
from pydantic import Field as Input
from sqlalchemy import Column, DateTime, ForeignKey, Index, String, Text, tuple_
from sqlmodel import Field, Relationship, Session, SQLModel, col, create_engine, select

Priority = Literal["none", "low", "medium", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
Status = Literal["open", "done"]
PAGE_SIZE = 50

# A pool for the requests one worker serves at once; SQLAlchemy's default (5, and up to 10
# more opened and closed as needed) would open a connection for many requests of the mix.
engine = create_engine(os.environ["DATABASE_URL"], pool_size=10)
SECRET = os.environ["JWT_SECRET"]


def now() -> datetime:
    return datetime.now(UTC)


# --- tables -------------------------------------------------------------------------------


class TaskTag(SQLModel, table=True):
    __tablename__ = "task_tag"

    task_id: str = Field(
        sa_column=Column(String(36), ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    )
    tag: str = Field(primary_key=True, max_length=64, index=True)


class Task(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (
        Index("ix_task_owner_created", "owner", "created_at", "id"),
        Index("ix_task_owner_due", "owner", "due_at", "id"),
    )

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True, max_length=36)
    owner: str = Field(max_length=255, index=True)
    title: str = Field(sa_column=Column(Text, nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default="open", max_length=8)
    priority: int = 0
    due_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    completed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    created_at: datetime = Field(default_factory=now, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(default_factory=now, sa_type=DateTime(timezone=True))

    tag_rows: list[TaskTag] = Relationship(
        sa_relationship_kwargs={"lazy": "selectin", "cascade": "all, delete-orphan"}
    )


# --- request and response shapes ------------------------------------------------------------

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    description: str = Input("", max_length=10_000)
    priority: Priority = "none"
    tags: list[Tag] = Input(default_factory=list, max_length=20)
    due_at: AwareDatetime | None = None


class TaskRead(BaseModel):
    id: str
    title: str
    description: str
    status: Status
    priority: Priority
    tags: list[str]
    due_at: datetime | None
    completed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, task: Task) -> Self:
        return cls(
            id=task.id,
            title=task.title,
            description=task.description,
            status=task.status,  # type: ignore[arg-type]
            priority=PRIORITIES[task.priority],
            tags=sorted(row.tag for row in task.tag_rows),
            due_at=task.due_at,
            completed_at=task.completed_at,
            created_at=task.created_at,
            updated_at=task.updated_at,
        )


class TaskPage(BaseModel):
    items: list[TaskRead]
    next_cursor: str | None


# --- dependencies ---------------------------------------------------------------------------


def get_session() -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(HTTPBearer())],
) -> str:
    try:
        claims = jwt.decode(
            credentials.credentials,
            SECRET,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
            leeway=30,
        )
    except jwt.PyJWTError:
        raise HTTPException(401, "invalid or expired token") from None
    return str(claims["sub"])


SessionDep = Annotated[Session, Depends(get_session)]
User = Annotated[str, Depends(current_user)]

app = FastAPI(title="baseline tasks")


def owned(session: Session, user: str, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.owner != user:
        raise HTTPException(404, "task not found")
    return task


def encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, task_id = base64.urlsafe_b64decode(cursor).decode().split("|", 1)
        return datetime.fromisoformat(created), task_id
    except ValueError:
        raise HTTPException(400, "invalid cursor") from None


# --- endpoints ------------------------------------------------------------------------------


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/tasks", status_code=201)
def create_task(body: TaskCreate, user: User, session: SessionDep) -> TaskRead:
    task = Task(
        owner=user,
        title=body.title,
        description=body.description,
        priority=PRIORITIES.index(body.priority),
        due_at=body.due_at,
    )
    task.tag_rows = [TaskTag(task_id=task.id, tag=tag) for tag in sorted(set(body.tags))]
    session.add(task)
    session.commit()
    session.refresh(task)
    return TaskRead.of(task)


@app.get("/tasks/{task_id}")
def get_task(task_id: str, user: User, session: SessionDep) -> TaskRead:
    return TaskRead.of(owned(session, user, task_id))


@app.get("/tasks")
def list_tasks(
    user: User,
    session: SessionDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
    cursor: str | None = None,
) -> TaskPage:
    query = select(Task).where(Task.owner == user)
    if status is not None:
        query = query.where(Task.status == status)
    if cursor is not None:
        query = query.where(tuple_(col(Task.created_at), col(Task.id)) > decode_cursor(cursor))
    query = query.order_by(col(Task.created_at), col(Task.id)).limit(limit + 1)
    rows = session.exec(query).all()
    page = rows[:limit]
    return TaskPage(
        items=[TaskRead.of(task) for task in page],
        next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None,
    )


@app.post("/tasks/{task_id}/complete")
def complete_task(task_id: str, user: User, session: SessionDep) -> TaskRead:
    task = owned(session, user, task_id)
    if task.status != "done":
        task.status = "done"
        task.completed_at = task.updated_at = now()
        session.add(task)
        session.commit()
        session.refresh(task)
    return TaskRead.of(task)


def create_tables() -> None:
    SQLModel.metadata.create_all(engine)


if __name__ == "__main__":
    create_tables()
