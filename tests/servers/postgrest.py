"""A PostgREST-compatible HTTP layer over the private PostgreSQL, so tests drive the REAL supabase-py client.

It covers what the daemon sends through supabase-py 2.34.1 and nothing more:

    GET    /rest/v1/T?select=a,b&col=eq.x&col=in.(x,y)&order=c.desc&limit=n   select().eq().in_()...
    POST   /rest/v1/T[?on_conflict=id][&columns=...]  Prefer: return=..., resolution=merge-duplicates
    PATCH  /rest/v1/T?id=eq.x                                                 update().eq()
    DELETE /rest/v1/T?id=eq.x                                                 delete().eq()

The SQL mirrors what PostgREST 12 generates: the body goes to PostgreSQL once, as a JSON parameter
expanded by ``json_populate_recordset`` (so PostgreSQL, not us, converts text to enums, timestamps,
jsonb), an upsert updates only the columns present in the payload, and the result is rendered by
``json_agg`` (so timestamps come back exactly as PostgREST renders them). Identifiers are quoted with
``psycopg.sql`` and must exist in the catalog; values are always bound parameters.

Wire behaviour copied from PostgREST/Supabase: status codes (201 POST, 200/204 PATCH and DELETE by
``return=``), ``Content-Range``, ``Preference-Applied``, error bodies ``{"code","message","details",
"hint"}`` with PostgREST's SQLSTATE-to-status table, the API gateway's 401 for a bad ``apikey`` (that body
has no ``code``, as on the real platform), and ``SET LOCAL ROLE`` from the JWT's ``role`` claim so
row-level security applies as on Supabase (``service_role`` bypasses it).

Fault injection: ``outage()`` makes every request (or the next N) answer a status of your choice;
``requests`` logs every request with the status it got.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row

from tests.servers.loopback import LoopbackHTTPServer

SCHEMA = "public"
"""The only exposed schema, as in a default Supabase project."""

API_ROLES = frozenset({"anon", "authenticated", "service_role"})
"""Database roles a JWT may select with its ``role`` claim (created by ``postgres.SUPABASE_BOOTSTRAP``)."""

RESERVED_PARAMS = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns"})
"""Query parameters that are not column filters."""

COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
IS_VALUES = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}
SINGLE_OBJECT = "application/vnd.pgrst.object+json"


# -- errors ----------------------------------------------------------------------------------------------


class HttpError(Exception):
    """An error response; ``body`` is sent as JSON."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def api_error(status: int, code: str, message: str, details: Any = None, hint: Any = None) -> HttpError:
    """PostgREST's error shape."""
    return HttpError(status, {"code": code, "details": details, "hint": hint, "message": message})


def pg_status(sqlstate: str | None, role: str) -> int:
    """PostgREST's mapping from SQLSTATE to HTTP status (docs: "Errors" > "PostgreSQL errors")."""
    state = sqlstate or "08000"  # no SQLSTATE: the connection itself failed
    exact = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404, "42P01": 404,
             "42P17": 500, "42501": 401 if role == "anon" else 403}  # fmt: skip
    by_class = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
                "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500,
                "F0": 500, "HV": 500, "P0": 500, "XX": 500}  # fmt: skip
    return exact.get(state) or by_class.get(state[:2], 400)


def from_pg_error(exc: psycopg.Error, role: str) -> HttpError:
    if exc.sqlstate is None:  # could not reach PostgreSQL: PostgREST answers PGRST001/503
        return api_error(503, "PGRST001", "Database client error. Retrying the connection.", str(exc))
    diag = exc.diag
    message = diag.message_primary or str(exc)
    status = pg_status(exc.sqlstate, role)
    return api_error(status, exc.sqlstate, message, diag.message_detail, diag.message_hint)


# -- JWT (HS256, as Supabase's legacy anon/service_role keys) ---------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(claims: dict[str, Any], secret: str) -> str:
    """A signed HS256 JWT; supabase-py 2.34.1 only requires a non-empty key, but this is a real one."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def read_jwt(token: str, secret: str) -> dict[str, Any]:
    """The claims of a token we signed, or PostgREST's 401 PGRST301/PGRST303."""
    parts = token.split(".")
    if len(parts) != 3:
        raise api_error(401, "PGRST301", f"Expected 3 parts in JWT; got {len(parts)}")
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        valid = hmac.compare_digest(expected, _b64url_decode(parts[2]))
        claims = json.loads(_b64url_decode(parts[1]))
    except ValueError:
        valid, claims = False, None
    if not valid or not isinstance(claims, dict):
        raise api_error(401, "PGRST301", "JWSError JWSInvalidSignature")
    if "exp" in claims and claims["exp"] < time.time():
        raise api_error(401, "PGRST303", "JWT expired")
    return claims


# -- the exposed table, read from the catalog (our "schema cache") ---------------------------------------


@dataclass(frozen=True)
class Table:
    name: str
    types: dict[str, str]
    """Column name -> SQL type as ``format_type`` spells it (trusted: it comes from the catalog)."""
    primary_key: list[str]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, self.name)

    def column(self, name: str) -> sql.Identifier:
        """A qualified column, or PostgreSQL's own 42703 for a name it does not have."""
        if name not in self.types:
            raise api_error(400, "42703", f"column {self.name}.{name} does not exist")
        return sql.Identifier(SCHEMA, self.name, name)

    def payload_column(self, name: str) -> sql.Identifier:
        """A bare column named by a request body; unknown ones are PostgREST's PGRST204."""
        if name not in self.types:
            message = f"Could not find the '{name}' column of '{self.name}' in the schema cache"
            raise api_error(400, "PGRST204", message)
        return sql.Identifier(name)


CATALOG_QUERY = """
select a.attname, format_type(a.atttypid, a.atttypmod),
       coalesce(a.attnum = any(i.indkey), false) as in_pk
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_index i on i.indrelid = c.oid and i.indisprimary
where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p', 'v')
order by a.attnum
"""


def load_table(conn: psycopg.Connection[Any], name: str) -> Table:
    rows = conn.cursor(row_factory=tuple_row).execute(CATALOG_QUERY, (SCHEMA, name)).fetchall()
    if not rows:
        raise api_error(404, "PGRST205", f"Could not find the table '{SCHEMA}.{name}' in the schema cache")
    return Table(name, {col: typ for col, typ, _ in rows}, [col for col, _, pk in rows if pk])


# -- query string -> SQL fragments (each returns SQL plus the values bound by its placeholders) ----------


def select_list(table: Table, value: str | None) -> sql.Composable:
    """``select=*`` or ``select=a,b``; aliases, casts and embedded resources are not supported here."""
    names = [name for name in (value or "*").split(",") if name]
    if "*" in names or not names:
        return sql.SQL("*")
    for name in names:
        if any(ch in name for ch in ':()"!'):
            raise api_error(400, "PGRST100", f"select={value!r} is not supported by the test server")
        table.column(name)  # 42703 for an unknown name
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)


def where_clause(table: Table, params: list[tuple[str, str]]) -> tuple[sql.Composable, list[Any]]:
    values: list[Any] = []
    filters = [(key, expr) for key, expr in params if key not in RESERVED_PARAMS]
    conditions = [filter_condition(table, key, expr, values) for key, expr in filters]
    if not conditions:
        return sql.SQL(""), values
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions), values


def filter_condition(table: Table, name: str, expr: str, values: list[Any]) -> sql.Composable:
    """One ``col=[not.]op.value`` filter; the value is bound and cast to the column's type, as PostgREST
    leaves it an untyped literal for PostgreSQL to coerce."""
    if name in ("and", "or"):
        raise api_error(400, "PGRST100", f"'{name}=' filters are not supported by the test server")
    column = table.column(name)
    negate = expr.startswith("not.")
    op, dot, value = expr.removeprefix("not.").partition(".")
    cast = sql.SQL("{}::" + table.types[name]).format(sql.Placeholder())  # type name is from the catalog
    if not dot:
        raise api_error(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 1)')
    if op in COMPARISONS:
        condition: sql.Composable = sql.SQL("{} {} {}").format(column, sql.SQL(COMPARISONS[op]), cast)
        values.append(value)
    elif op == "in":
        items = parse_in_list(value)
        condition = sql.SQL("{} IN ({})").format(column, sql.SQL(", ").join([cast] * len(items)))
        condition = condition if items else sql.SQL("false")
        values.extend(items)
    elif op == "is" and value.lower() in IS_VALUES:
        condition = sql.SQL("{} IS " + IS_VALUES[value.lower()]).format(column)
    elif op in ("like", "ilike"):
        condition = sql.SQL("{} {} {}").format(column, sql.SQL(op.upper()), sql.Placeholder())
        values.append(value.replace("*", "%"))
    else:
        raise api_error(400, "PGRST100", f'"failed to parse filter ({expr})" (line 1, column 1)')
    return sql.SQL("NOT ({})").format(condition) if negate else condition


def parse_in_list(value: str) -> list[str]:
    """``(a,"b,c",d)`` -> ``['a', 'b,c', 'd']``; double quotes protect commas, backslash escapes."""
    if not (value.startswith("(") and value.endswith(")")):
        raise api_error(400, "PGRST100", f'"failed to parse filter (in.{value})" (line 1, column 4)')
    items, current, quoted, escaped, had_any = [], [], False, False, False
    for ch in value[1:-1]:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted, had_any = not quoted, True
        elif ch == "," and not quoted:
            items.append("".join(current))
            current, had_any = [], False
        else:
            current.append(ch)
            had_any = True
    if current or had_any or items:
        items.append("".join(current))
    return items


def order_clause(table: Table, value: str | None) -> sql.Composable:
    """``order=a.desc.nullslast,b`` -> ``ORDER BY a DESC NULLS LAST, b``."""
    if not value:
        return sql.SQL("")
    modifiers = {"asc": "ASC", "desc": "DESC", "nullsfirst": "NULLS FIRST", "nullslast": "NULLS LAST"}
    terms = []
    for term in value.split(","):
        name, *mods = term.split(".")
        if any(mod not in modifiers for mod in mods):
            raise api_error(400, "PGRST100", f'"failed to parse order ({value})" (line 1, column 1)')
        terms.append(sql.SQL(" ").join([table.column(name), *(sql.SQL(modifiers[m]) for m in mods)]))
    return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)


def page_clause(limit: str | None, offset: str | None) -> sql.Composable:
    try:
        parts = [sql.SQL(" LIMIT {}").format(int(limit))] if limit else []
        parts += [sql.SQL(" OFFSET {}").format(int(offset))] if offset else []
    except ValueError:
        raise api_error(400, "PGRST100", f"limit/offset must be integers: {limit!r}, {offset!r}") from None
    return sql.Composed(parts)


def parse_prefer(header: str | None) -> dict[str, str]:
    prefs = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        if key:
            prefs[key] = value
    return prefs


# -- one request ---------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return cls(status, body, {"Content-Type": "application/json; charset=utf-8", **headers})


@dataclass
class ApiRequest:
    """A parsed request, handed to one of the verb handlers below inside a transaction."""

    conn: psycopg.Connection[Any]
    table: Table
    params: list[tuple[str, str]]
    prefer: dict[str, str]
    accept: str
    body: bytes

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)

    def json_body(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise api_error(400, "PGRST102", "Empty or invalid json") from None

    def run(self, statement: sql.Composed, values: list[Any]) -> tuple[bytes, int]:
        """Execute a statement that yields ``(json_text, row_count)``."""
        json_text, count = self.conn.execute(statement, values).fetchone()  # type: ignore[misc]
        return json_text.encode(), count


AGGREGATE = "SELECT coalesce(json_agg(_pgrst_t), '[]')::text, count(*) FROM ({}) _pgrst_t"
"""How PostgREST turns rows into the response body: one ``json_agg`` in the database."""


def with_returning(req: ApiRequest, mutation: sql.Composed) -> sql.Composed:
    """Wrap INSERT/UPDATE/DELETE so it returns the (selected columns of) rows actually written."""
    returning = sql.SQL("{} RETURNING {}.*").format(mutation, req.table.ident)
    inner = sql.SQL("SELECT {} FROM pgrst_source").format(select_list(req.table, req.param("select")))
    return sql.SQL("WITH pgrst_source AS ({}) ").format(returning) + sql.SQL(AGGREGATE).format(inner)


def content_range(first: int, count: int, total: int | None) -> str:
    span = f"{first}-{first + count - 1}" if count else "*"
    return f"{span}/{'*' if total is None else total}"


def written(req: ApiRequest, status: int, body: bytes, count: int, applied: list[str]) -> Response:
    """The response to a write: the rows (``return=representation``) or nothing, with PostgREST's headers."""
    applied = list(applied)
    if "return" in req.prefer:
        applied.append(f"return={req.prefer['return']}")
    total = count if "count" in req.prefer else None
    if total is not None:
        applied.append(f"count={req.prefer['count']}")
    # An insert reports no row range ("*/*"); an update or delete reports "0-<n-1>/*".
    headers = {"Content-Range": content_range(0, 0 if status == 201 else count, total)}
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    if req.prefer.get("return") != "representation":  # PostgREST's default is minimal
        return Response(204 if status == 200 else status, b"", headers)
    return Response.json(status, single_object(req, body, count), **headers)


def single_object(req: ApiRequest, body: bytes, count: int) -> bytes:
    """``Accept: application/vnd.pgrst.object+json`` (``.single()``): exactly one row or 406."""
    if req.accept != SINGLE_OBJECT:
        return body
    if count != 1:
        raise api_error(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                        f"The result contains {count} rows")  # fmt: skip
    return json.dumps(json.loads(body)[0]).encode()


def handle_get(req: ApiRequest) -> Response:
    table = req.table
    where, values = where_clause(table, req.params)
    page = page_clause(req.param("limit"), req.param("offset"))
    inner = sql.SQL("SELECT {} FROM {}").format(select_list(table, req.param("select")), table.ident)
    inner = inner + where + order_clause(table, req.param("order")) + page
    body, count = req.run(sql.SQL(AGGREGATE).format(inner), values)
    total = None
    if "count" in req.prefer:  # exact, planned and estimated are all answered exactly here
        counted = req.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident) + where, values)
        total = counted.fetchone()[0]  # type: ignore[index]
    offset = int(req.param("offset") or 0)
    headers = {"Content-Range": content_range(offset, count, total)}
    return Response.json(200, single_object(req, body, count), **headers)


def handle_post(req: ApiRequest) -> Response:
    """INSERT, or upsert with ``resolution=merge-duplicates`` (update only the payload's columns)."""
    rows, columns = insert_payload(req)
    if not rows:  # PostgREST answers an empty array with an empty insert
        return written(req, 201, b"[]", 0, [])
    if "missing" in req.prefer:
        raise api_error(400, "PGRST100", "Prefer: missing=default is not supported by the test server")
    idents = [req.table.payload_column(name) for name in columns]
    names = sql.SQL(", ").join(idents)
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM json_populate_recordset(NULL::{}, {}::json)").format(
        req.table.ident, names, names, req.table.ident, sql.Placeholder()
    )
    resolution = req.prefer.get("resolution")
    applied = []
    if resolution in ("merge-duplicates", "ignore-duplicates"):
        insert += on_conflict(req, idents, resolution)
        applied.append(f"resolution={resolution}")
    body, count = req.run(with_returning(req, insert), [json.dumps(rows)])
    return written(req, 201, body, count, applied)


def insert_payload(req: ApiRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and the columns to write: an object's keys, or ``?columns=`` / the first row's keys for a list."""
    payload = req.json_body()
    rows = [payload] if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise api_error(400, "PGRST102", "Empty or invalid json")
    columns_param = req.param("columns")
    if columns_param:
        columns = [name.strip().strip('"') for name in columns_param.split(",")]
    else:
        columns = list(rows[0]) if rows else []
        if any(set(row) != set(columns) for row in rows):
            raise api_error(400, "PGRST102", "All object keys must match")
    return rows, columns


def on_conflict(req: ApiRequest, idents: list[sql.Identifier], resolution: str) -> sql.Composable:
    target_names = (req.param("on_conflict") or ",".join(req.table.primary_key)).split(",")
    target = sql.SQL(", ").join(req.table.payload_column(name.strip()) for name in target_names)
    if resolution == "ignore-duplicates":
        return sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(target)
    updates = sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(ident, ident) for ident in idents)
    return sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(target, updates)


def handle_patch(req: ApiRequest) -> Response:
    """UPDATE the filtered rows with the payload's columns (values converted by PostgreSQL)."""
    payload = req.json_body()
    if not isinstance(payload, dict):
        raise api_error(400, "PGRST102", "Empty or invalid json")
    where, values = guarded_where(req, "UPDATE")
    if not payload:  # PostgREST turns an empty PATCH into a no-op
        return written(req, 200, b"[]", 0, [])
    sets = sql.SQL(", ").join(
        sql.SQL("{} = pgrst_body.{}").format(req.table.payload_column(name), sql.Identifier(name))
        for name in payload
    )
    update = sql.SQL("UPDATE {} SET {} FROM json_populate_record(NULL::{}, {}::json) AS pgrst_body").format(
        req.table.ident, sets, req.table.ident, sql.Placeholder()
    )
    body, count = req.run(with_returning(req, update + where), [json.dumps(payload), *values])
    return written(req, 200, body, count, [])


def handle_delete(req: ApiRequest) -> Response:
    where, values = guarded_where(req, "DELETE")
    delete = sql.SQL("DELETE FROM {}").format(req.table.ident) + where
    body, count = req.run(with_returning(req, delete), values)
    return written(req, 200, body, count, [])


def guarded_where(req: ApiRequest, verb: str) -> tuple[sql.Composable, list[Any]]:
    """Supabase runs pg-safeupdate: an UPDATE or DELETE without a filter is refused (21000)."""
    if not any(key not in RESERVED_PARAMS for key, _ in req.params):
        raise api_error(400, "21000", f"{verb} requires a WHERE clause")
    return where_clause(req.table, req.params)


HANDLERS: dict[str, Callable[[ApiRequest], Response]] = {
    "GET": handle_get,
    "HEAD": handle_get,
    "POST": handle_post,
    "PATCH": handle_patch,
    "DELETE": handle_delete,
}


# -- the server ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the test server saw it (``query`` is URL-decoded)."""

    method: str
    path: str
    query: str
    status: int
    prefer: str | None


class Outage:
    """Returned by ``PostgrestServer.outage()``; as a context manager it ends the outage on exit."""

    def __init__(self, server: PostgrestServer) -> None:
        self._server = server

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.clear_outage()


class PostgrestServer:
    """The HTTP layer; ``url`` and ``service_key`` go to ``supabase.create_client(url, key)``."""

    def __init__(self, dsn: str, *, jwt_secret: str | None = None) -> None:
        self.dsn = dsn
        self.jwt_secret = jwt_secret or secrets.token_urlsafe(32)
        self.service_key = self.api_key("service_role")
        self.anon_key = self.api_key("anon")
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._outage: tuple[int, int | None] | None = None  # (status, requests left or None = until cleared)
        self._http = LoopbackHTTPServer(type("Handler", (_Handler,), {"api": self}), name="postgrest")

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_key(self, role: str) -> str:
        """A long-lived project key like Supabase's legacy ``anon`` / ``service_role`` JWTs."""
        never = int(time.time()) + 10 * 365 * 86400
        return make_jwt({"iss": "supabase-test", "role": role, "exp": never}, self.jwt_secret)

    def user_token(self, sub: str, **claims: Any) -> str:
        """A signed-in user's access token (role ``authenticated``), for testing RLS policies."""
        claims = {"sub": sub, "role": "authenticated", "exp": int(time.time()) + 3600, **claims}
        return make_jwt(claims, self.jwt_secret)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> PostgrestServer:
        """Serve in a daemon thread; a restart reuses the port so clients' URLs stay valid."""
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> PostgrestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection and inspection ----------------------------------------------------------------

    def outage(self, status: int = 503, requests: int | None = None) -> Outage:
        """Answer every request with ``status`` (JSON body, ``code`` = the status as a string, which is also
        what supabase-py reports for a non-JSON gateway error) until cleared, or only the next
        ``requests`` requests (a count, not a time, so that it holds on a loaded machine)."""
        with self._lock:
            self._outage = (status, requests)
        return Outage(self)

    def clear_outage(self) -> None:
        with self._lock:
            self._outage = None

    def clear_requests(self) -> None:
        self.requests.clear()

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """Rows straight from PostgreSQL (native Python types), filtered by ``col=value``, by primary key."""
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            meta = load_table(conn, table)
            conditions = [sql.SQL("{} = {}").format(meta.column(col), sql.Placeholder()) for col in where]
            query = sql.SQL("SELECT * FROM {}").format(meta.ident)
            if conditions:
                query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions)
            order = [sql.Identifier(col) for col in meta.primary_key]
            if order:
                query += sql.SQL(" ORDER BY ") + sql.SQL(", ").join(order)
            return conn.execute(query, list(where.values())).fetchall()

    def truncate(self, *tables: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for table in tables:
                conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(load_table(conn, table).ident))

    # -- request handling (called from the HTTP threads) -----------------------------------------------

    def handle(self, method: str, target: str, headers: Message, body: bytes) -> Response:
        parts = urlsplit(target)
        response = self._respond(method, parts.path, parts.query, headers, body)
        entry = LoggedRequest(
            method, parts.path, unquote(parts.query), response.status, headers.get("Prefer")
        )
        self.requests.append(entry)
        return response

    def _respond(self, method: str, path: str, query: str, headers: Message, body: bytes) -> Response:
        outage = self._active_outage()
        if outage is not None:
            return outage
        role = "anon"
        try:
            table_name = _table_from_path(path)
            role, claims = self._authenticate(headers)
            handler = HANDLERS.get(method)
            if handler is None:
                raise api_error(405, "PGRST117", f"Unsupported HTTP method: {method}")
            profile = "Accept-Profile" if method in ("GET", "HEAD") else "Content-Profile"
            if (headers.get(profile) or SCHEMA) != SCHEMA:
                raise api_error(406, "PGRST106", f"The schema must be one of the following: {SCHEMA}")
            with psycopg.connect(self.dsn) as conn:  # one transaction per request; rolled back on error
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                conn.execute("SELECT set_config('request.jwt.claims', %s, true)", [json.dumps(claims)])
                params = parse_qsl(query, keep_blank_values=True)
                prefer = parse_prefer(headers.get("Prefer"))
                table = load_table(conn, table_name)
                return handler(ApiRequest(conn, table, params, prefer, headers.get("Accept", ""), body))
        except HttpError as exc:
            return Response.json(exc.status, exc.body)
        except psycopg.Error as exc:
            error = from_pg_error(exc, role)
            return Response.json(error.status, error.body)
        except Exception as exc:  # a bug in this test server: make it loud in the test's output
            traceback.print_exc()
            error = api_error(500, "PGRST000", f"test server bug: {exc!r}")
            return Response.json(error.status, error.body)

    def _active_outage(self) -> Response | None:
        with self._lock:
            if self._outage is None:
                return None
            status, left = self._outage
            if left is not None:
                self._outage = (status, left - 1) if left > 1 else None
        message = f"injected outage ({status}) by the test server"
        return Response.json(status, {"code": str(status), "message": message, "details": None, "hint": None})

    def _authenticate(self, headers: Message) -> tuple[str, dict[str, Any]]:
        """The gateway checks ``apikey`` (401 without ``code``), then PostgREST the bearer JWT."""
        apikey = headers.get("apikey")
        if not apikey:
            hint = "No `apikey` request header or url param was found."
            raise HttpError(401, {"message": "No API key found in request", "hint": hint})
        if apikey not in (self.service_key, self.anon_key):
            hint = "Double check your Supabase `anon` or `service_role` API key."
            raise HttpError(401, {"message": "Invalid API key", "hint": hint})
        scheme, _, token = (headers.get("Authorization") or f"Bearer {apikey}").partition(" ")
        if scheme.lower() != "bearer":
            raise api_error(401, "PGRST301", "Expected a Bearer token in the Authorization header")
        claims = read_jwt(token.strip(), self.jwt_secret)
        role = claims.get("role", "anon")
        if role not in API_ROLES:
            raise api_error(401, "PGRST301", f'role "{role}" is not allowed by the test server')
        return role, claims


def _table_from_path(path: str) -> str:
    prefix = "/rest/v1/"
    name = unquote(path[len(prefix) :]) if path.startswith(prefix) else ""
    if not name or "/" in name:
        raise api_error(404, "PGRST125", f"Invalid path specified in request URL: {path}")
    return name


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response carries Content-Length
    api: PostgrestServer  # set on a subclass per server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.api.handle(self.command, self.path, self.headers, body)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PATCH = do_DELETE = do_PUT = _serve  # noqa: N815 (http.server's names)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: ``PostgrestServer.requests`` is the log tests look at."""
