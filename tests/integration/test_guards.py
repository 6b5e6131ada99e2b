"""The database guards the ledger's shape (0006_guards.sql): owned columns, payloads checked per
event type, partitions within a window, revocation only through the ledger."""

from __future__ import annotations

import asyncio
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from msgspec import inspect

from commands.agents import NotFound, revoke_agent
from events import codec, store
from events.types import AgentRegistered, Event, ItemListed, VoteCast
from infra.db import pool_for
from infra.migrate import load_migrations, migrate
from infra.settings import Role, Settings
from tests.conftest import fresh_database
from tests.integration.conftest import OPERATOR, new_agent, new_item

APP_ROLES: tuple[Role, ...] = ("command", "projector", "query")
Refused = psycopg.errors.InsufficientPrivilege


def _registered() -> dict[str, Any]:
    """The parameters of a valid AgentRegistered row, for statements that forge something else."""
    agent = uuid.uuid4()
    payload = codec.encode(AgentRegistered(agent_id=agent, name="forger")).decode()
    return {"agent": agent, "payload": payload}


# The forged appends of issue 11, each otherwise a valid row. Only the command role may insert
# into events at all, and only the columns it owns.
_COLUMNS = "event_type, agent_id, payload"
_VALUES = "'AgentRegistered', %(agent)s, %(payload)s"
FORGED_COLUMNS = {
    "tx_id": f"INSERT INTO events (tx_id, {_COLUMNS}) VALUES ('1', {_VALUES})",
    "position": f"INSERT INTO events (position, {_COLUMNS}) OVERRIDING SYSTEM VALUE "
    f"VALUES (1, {_VALUES})",
    "recorded_at": f"INSERT INTO events (recorded_at, {_COLUMNS}) VALUES ('2100-01-01', {_VALUES})",
    "every column": f"INSERT INTO events VALUES (DEFAULT, DEFAULT, DEFAULT, {_VALUES}, NULL)",
    "a partition directly": f"INSERT INTO events_default ({_COLUMNS}) VALUES ({_VALUES})",
}
OWNER_ONLY = [
    "ALTER TABLE events ALTER COLUMN recorded_at SET DEFAULT '2100-01-01'",
    "ALTER TABLE events DISABLE TRIGGER events_payload_valid",
    "SET session_replication_role = replica",
]


@pytest.fixture
def role_conn(settings: Settings, role: Role) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.url_for(role), autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize("forged", FORGED_COLUMNS)
def test_no_role_writes_the_databases_own_columns(
    role_conn: psycopg.Connection, forged: str
) -> None:
    """tx_id, position and recorded_at are the database's own: no application role sets them."""
    with pytest.raises(Refused):
        role_conn.execute(FORGED_COLUMNS[forged], _registered())


@pytest.mark.parametrize("role", APP_ROLES)
@pytest.mark.parametrize("statement", OWNER_ONLY)
def test_no_role_changes_the_guards(role_conn: psycopg.Connection, statement: str) -> None:
    """No application role may change a default, disable a trigger or skip triggers."""
    with pytest.raises(Refused):
        role_conn.execute(statement)


@pytest.mark.parametrize("role", APP_ROLES)
def test_no_role_appends_an_empty_vote(role_conn: psycopg.Connection, role: Role) -> None:
    """A VoteCast with payload {} is refused: by its payload check for the command role, which
    may append, and by privileges for the others."""
    expected = psycopg.errors.CheckViolation if role == "command" else Refused
    with pytest.raises(expected):
        role_conn.execute("INSERT INTO events (event_type, payload) VALUES ('VoteCast', '{}')")


def test_the_owned_columns_still_append(settings: Settings) -> None:
    """The forged rows above are refused for the forged column alone: without it they append."""
    with psycopg.connect(settings.url_for("command"), autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO events ({_COLUMNS}) VALUES ({_VALUES}) "
            "RETURNING recorded_at > now() - interval '1 minute'",
            _registered(),
        ).fetchone()
    assert row == (True,)


def test_the_owner_still_appends_with_its_own_times(database_url: str) -> None:
    """The schema owner's bulk append (seed, tests) still sets recorded_at, through the check."""
    # The first instant of this month: its partition exists, so the row stays out of the
    # DEFAULT partition (where it would keep ensure_event_partitions from creating its month).
    at = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    event = ItemListed(item_id=f"owner-{uuid.uuid4().hex[:8]}", item_type="tool", title="Owned")
    with psycopg.connect(database_url) as conn:
        assert store.append_many_sync(conn, [(event, at)]) == 1
        row = conn.execute(
            "SELECT recorded_at FROM events WHERE item_id = %s", (event.item_id,)
        ).fetchone()
    assert row == (at,)


# --- payloads agree with events/types.py ------------------------------------------------------

JSON_VALUES: dict[str, object] = {
    "string": "x",
    "number": 1,
    "boolean": True,
    "null": None,
    "object": {},
    "array": [],
}
A_TIME = msgspec.to_builtins(datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC))
AN_ID = str(uuid.uuid4())


def _json_types(t: inspect.Type) -> set[str]:
    """The JSON types a field of msgspec type `t` may hold."""
    match t:
        case inspect.UnionType(types=types):
            return set().union(*(_json_types(member) for member in types))
        case inspect.NoneType():
            return {"null"}
        case inspect.StrType() | inspect.UUIDType() | inspect.DateTimeType():
            return {"string"}
        case inspect.LiteralType(values=values) if all(isinstance(v, str) for v in values):
            return {"string"}
        case inspect.IntType():
            return {"number"}
    raise TypeError(f"{t} is new to events/types.py: teach 0006_guards.sql and this test")


def _valid(t: inspect.Type) -> object:
    """A JSON value of msgspec type `t`."""
    match t:
        case inspect.UnionType(types=types):
            return _valid(next(m for m in types if not isinstance(m, inspect.NoneType)))
        case inspect.UUIDType():
            return AN_ID
        case inspect.DateTimeType():
            return A_TIME
        case inspect.LiteralType(values=values):
            return values[0]
        case inspect.IntType():
            return 1  # the only integer field is a schema version: v1 is always one
    return "x"


def _misshapen(t: inspect.Type) -> list[object]:
    """Strings of the right JSON type but a shape msgspec refuses for `t`."""
    match t:
        case inspect.UnionType(types=types):
            return [bad for member in types for bad in _misshapen(member)]
        case inspect.UUIDType():
            return ["not-a-uuid", "{" + str(uuid.uuid4()) + "}"]
        case inspect.DateTimeType():
            return ["yesterday", "2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z"]
        case inspect.LiteralType():
            return ["sideways"]
    return []


@dataclass(frozen=True)
class Shape:
    """One event type as events/types.py declares it."""

    tag: str
    fields: tuple[inspect.Field, ...]

    def payload(self, everything: bool) -> dict[str, object]:
        """A valid payload: every field, or the required ones only."""
        values = {f.encode_name: _valid(f.type) for f in self.fields if everything or f.required}
        return {"type": self.tag, **values}

    def invalid(self) -> Iterator[tuple[str, dict[str, object]]]:
        """(field, payload) for each required field missing and each field of a wrong type."""
        valid = self.payload(everything=True)
        for f in self.fields:
            if f.required:
                yield f.encode_name, {k: v for k, v in valid.items() if k != f.encode_name}
            wrong = [v for kind, v in JSON_VALUES.items() if kind not in _json_types(f.type)]
            for value in wrong + _misshapen(f.type):
                yield f.encode_name, {**valid, f.encode_name: value}


def _shapes() -> list[Shape]:
    infos = [inspect.type_info(cls) for cls in typing.get_args(Event)]
    return [Shape(str(i.tag), i.fields) for i in infos if isinstance(i, inspect.StructType)]


SHAPES = {shape.tag: shape for shape in _shapes()}
_APPEND = "INSERT INTO events (event_type, agent_id, item_id, payload) VALUES (%s, %s, %s, %s)"


def _append(
    conn: psycopg.Connection, tag: str, payload: dict[str, object], keys: dict[str, object]
) -> None:
    """Append as events/store.py does: the key columns are those of the payload `keys`."""
    body = msgspec.json.encode(payload).decode()
    conn.execute(_APPEND, (tag, keys.get("agent_id"), keys.get("item_id"), body))


@pytest.fixture
def command_tx(settings: Settings) -> Iterator[psycopg.Connection]:
    """A command-role transaction rolled back at the end: nothing lands in the session ledger."""
    with (
        psycopg.connect(settings.url_for("command")) as conn,
        conn.transaction(force_rollback=True),
    ):
        yield conn


def test_every_event_type_is_checked() -> None:
    """The check knows exactly the event types of the Event union (0006_guards.sql names them)."""
    assert set(SHAPES) == {"AgentRegistered", "AgentRevoked", "ItemListed", "VoteCast"}


@pytest.mark.parametrize("tag", SHAPES)
def test_valid_payloads_are_accepted(command_tx: psycopg.Connection, tag: str) -> None:
    """A payload the codec encodes is appended, with every field or with the required ones."""
    shape = SHAPES[tag]
    for everything in (True, False):
        event = msgspec.convert(shape.payload(everything), Event)
        payload = msgspec.json.decode(codec.encode(event))
        _append(command_tx, tag, payload, payload)
    assert shape.fields  # every event type carries data


@pytest.mark.parametrize("tag", SHAPES)
def test_invalid_payloads_are_refused(command_tx: psycopg.Connection, tag: str) -> None:
    """Each required field missing and each field of a wrong type or shape is refused by the
    database, naming the field, exactly where the codec cannot decode the payload either."""
    shape = SHAPES[tag]
    valid, cases = shape.payload(everything=True), list(shape.invalid())
    for field, payload in cases:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(payload, Event)
        with (
            pytest.raises(psycopg.errors.CheckViolation, match=field),
            command_tx.transaction(),
        ):
            _append(command_tx, tag, payload, valid)
    assert len(cases) >= 2 * len(shape.fields)


@pytest.mark.parametrize(
    ("event_type", "change", "reason"),
    [
        ("VoteCastV2", {}, "unknown event type"),
        ("AgentRevoked", {}, "type must be AgentRevoked"),
        ("AgentRegistered", {"agent_id": str(uuid.uuid4())}, "agent_id column"),
        ("AgentRegistered", {"item_id": "song-1"}, "item_id column"),
    ],
)
def test_rows_must_agree_with_their_payload(
    command_tx: psycopg.Connection, event_type: str, change: dict[str, str], reason: str
) -> None:
    """An unknown type, a payload of another type, or key columns other than the payload's are
    refused."""
    payload = SHAPES["AgentRegistered"].payload(everything=True)
    columns = {"agent_id": payload["agent_id"], "item_id": None, **change}
    body = msgspec.json.encode(payload).decode()
    with pytest.raises(psycopg.errors.CheckViolation, match=reason):
        command_tx.execute(_APPEND, (event_type, columns["agent_id"], columns["item_id"], body))


def _events() -> list[Event]:
    """Every event type, with and without its optional fields, and a time with an offset."""
    events = [
        msgspec.convert(shape.payload(everything), Event)
        for shape in SHAPES.values()
        for everything in (True, False)
    ]
    offset = datetime.now(timezone(timedelta(hours=5, minutes=30)))
    return [*events, VoteCast(uuid.uuid4(), "song-1", "song", "down", "up", offset)]


async def test_rows_recorded_before_the_guards_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events every append path wrote before 0006_guards.sql existed pass its check, so the
    guard refuses nothing the application writes."""
    every = load_migrations()
    monkeypatch.setattr("infra.migrate.load_migrations", lambda: every[:5])
    with fresh_database() as url:
        events = _events()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            for event in events:
                await store.append(conn, event)
            await store.positions(await store.append_all_later(conn, events))
            await store.append_many(conn, [(e, datetime.now(UTC)) for e in events])
            await conn.commit()
        monkeypatch.undo()
        assert "0006_guards" in migrate(url)
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE event_problem(event_type, agent_id, item_id, "
                "payload) IS NOT NULL), count(*) FROM ledger"
            ).fetchone()
    assert [m.version for m in every[:5]] == [1, 2, 3, 4, 5]
    assert row == (0, 3 * len(events))


async def test_the_api_still_appends(command_client: httpx.AsyncClient, database_url: str) -> None:
    """Registering, listing, voting, changing and retracting a vote and revoking all append."""
    agent, item = await new_agent(command_client), await new_item(command_client)
    for vote in ("up", "down", "none"):
        body = {"item_id": item, "vote": vote}
        response = await command_client.post("/api/v1/vote", json=body, headers=agent.headers)
        assert response.status_code in (200, 201), response.text
        assert response.json()["changed"]
    revoked = await command_client.delete(f"/api/v1/agents/{agent.agent_id}", headers=OPERATOR)
    assert revoked.status_code == 204
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT event_type FROM events WHERE agent_id = %s ORDER BY position", (agent.agent_id,)
        )
        types = [t for (t,) in await cursor.fetchall()]
    assert types == ["AgentRegistered", "VoteCast", "VoteCast", "VoteCast", "AgentRevoked"]


# --- partitions within a window -------------------------------------------------------------

_ENSURE = "SELECT ensure_event_partitions(%s, %s)"


@pytest.mark.parametrize(
    ("start", "months_ahead"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), 2),
        (datetime.now(UTC) - timedelta(days=3660 + 31), 2),
        (datetime.now(UTC) + timedelta(days=100), 2),
        (datetime.now(UTC), 37),
        (datetime.now(UTC), -1),
        (None, 2),
    ],
)
def test_partitions_only_within_the_window(
    settings: Settings, start: datetime | None, months_ahead: int
) -> None:
    """The projector (which maintains partitions) cannot create any beyond 10 years back, past
    the months ahead asked for, or more than 36 months ahead."""
    with (
        psycopg.connect(settings.url_for("projector"), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InvalidParameterValue, match=r"months_ahead|window"),
    ):
        conn.execute(_ENSURE, (start, months_ahead))


def test_partitions_inside_the_window_are_created(settings: Settings) -> None:
    """Within the window the projector still creates months, each guarded against TRUNCATE."""
    start = datetime.now(UTC) - timedelta(days=365 * 9)
    with (
        psycopg.connect(settings.url_for("projector")) as conn,
        conn.transaction(force_rollback=True),
    ):
        created = [name for (name,) in conn.execute(_ENSURE, (start, 36))]
        guarded = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'events_no_truncate' "
            "AND tgrelid::regclass::text = ANY(%s)",
            (created,),
        ).fetchone()
    assert len(created) > 100 and guarded == (len(created),)


def test_a_month_already_in_the_default_partition_is_skipped(database_url: str) -> None:
    """Within the window nothing else changed: a month whose rows already sit in the DEFAULT
    partition is skipped with a notice, and the months after it are created."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + 5
    month = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    after = (month + timedelta(days=31)).replace(day=1)
    event = ItemListed(item_id=f"future-{uuid.uuid4().hex[:8]}", item_type="song", title="Early")
    notices: list[str | None] = []
    with psycopg.connect(database_url) as conn, conn.transaction(force_rollback=True):
        conn.add_notice_handler(lambda notice: notices.append(notice.message_primary))
        store.append_many_sync(conn, [(event, month + timedelta(days=2))])
        created = [name for (name,) in conn.execute(_ENSURE, (month, 6))]
    assert created == [f"events_{after:%Y_%m}"]
    assert notices == [
        f"partition events_{month:%Y_%m} skipped: its rows are already in events_default"
    ]


def test_only_the_projector_maintains_partitions(admin_conn: psycopg.Connection) -> None:
    """Of the application roles only the projector may call ensure_event_partitions."""
    allowed = {
        role: admin_conn.execute(
            "SELECT has_function_privilege(%s, 'ensure_event_partitions(timestamptz, integer)', "
            "'EXECUTE')",
            (f"voteledger_{role}",),
        ).fetchone()
        for role in APP_ROLES
    }
    assert allowed == {"command": (False,), "projector": (True,), "query": (False,)}


@pytest.mark.parametrize("role", ["command", "query"])
def test_other_roles_cannot_create_partitions(role_conn: psycopg.Connection) -> None:
    """The command and query roles are refused even a partition within the window."""
    with pytest.raises(Refused):
        role_conn.execute(_ENSURE, (datetime.now(UTC), 2))


# --- revocation only through the ledger -----------------------------------------------------


async def _revoked_agent(command_client: httpx.AsyncClient) -> str:
    agent = await new_agent(command_client)
    response = await command_client.delete(f"/api/v1/agents/{agent.agent_id}", headers=OPERATOR)
    assert response.status_code == 204
    return agent.agent_id


def _revoked_at(admin_conn: psycopg.Connection, agent_id: str) -> datetime | None:
    row = admin_conn.execute("SELECT revoked_at FROM agents WHERE agent_id = %s", (agent_id,))
    found = row.fetchone()
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("role", APP_ROLES)
async def test_no_role_unrevokes_an_agent(
    command_client: httpx.AsyncClient,
    admin_conn: psycopg.Connection,
    role_conn: psycopg.Connection,
) -> None:
    """A revoked agent stays revoked: a bare UPDATE cannot clear or move its revocation."""
    agent_id = await _revoked_agent(command_client)
    for value in (None, datetime.now(UTC) + timedelta(days=1)):
        with pytest.raises(Refused):
            role_conn.execute(
                "UPDATE agents SET revoked_at = %s WHERE agent_id = %s", (value, agent_id)
            )
    assert _revoked_at(admin_conn, agent_id) is not None


async def test_the_owner_cannot_unrevoke_either(
    command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """The trigger binds the schema owner too: the ledger says the agent is revoked."""
    agent_id = await _revoked_agent(command_client)
    with pytest.raises(Refused, match="never undone"):
        admin_conn.execute("UPDATE agents SET revoked_at = NULL WHERE agent_id = %s", (agent_id,))


async def test_a_bare_update_cannot_revoke(
    settings: Settings, command_client: httpx.AsyncClient, admin_conn: psycopg.Connection
) -> None:
    """Setting revoked_at without appending AgentRevoked in the same transaction is refused, and
    so is changing an agent's key digest."""
    agent = await new_agent(command_client)
    with psycopg.connect(settings.url_for("command"), autocommit=True) as conn:
        with pytest.raises(Refused, match="AgentRevoked"):
            conn.execute(
                "UPDATE agents SET revoked_at = now() WHERE agent_id = %s", (agent.agent_id,)
            )
        with pytest.raises(Refused):
            conn.execute(
                "UPDATE agents SET key_digest = '\\x00' WHERE agent_id = %s", (agent.agent_id,)
            )
    assert _revoked_at(admin_conn, agent.agent_id) is None


async def test_revoking_through_the_ledger(settings: Settings, database_url: str) -> None:
    """revoke_agent appends one AgentRevoked and revokes; again it answers already revoked, and
    concurrent revocations append one event between them."""
    async with pool_for(settings, "command") as pool:
        agent = uuid.uuid4()
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO agents (agent_id, key_digest) VALUES (%s, %s)", (agent, agent.bytes)
            )
        results = await asyncio.gather(*(revoke_agent(pool, agent) for _ in range(4)))
        assert await revoke_agent(pool, agent) is None
        with pytest.raises(NotFound):
            await revoke_agent(pool, uuid.uuid4())
    assert sum(isinstance(position, int) for position in results) == 1
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE event_type = 'AgentRevoked' AND agent_id = %s",
            (agent,),
        ).fetchone()
    assert row == (1,)
