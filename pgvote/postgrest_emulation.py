"""Exact emulation of what PostgREST v12/v13 sends to PostgreSQL for ``/rpc/<fn>``.

There is no ``postgrest`` binary on the development machines, so tests and load tools call
the API through :class:`PostgrestEmulator`. It issues, on one autocommit connection logged in
as the authenticator role, the same statement sequence PostgREST issues per request and turns
the result (or the SQL error) into the HTTP status, headers and JSON body PostgREST would
answer with. The specification is ``docs/postgrest-contract.md`` (cited below as "contract §n");
PostgREST source file names are cited where the doc points to them.

Per request (contract §1.1 and "Emulation recipe")::

    BEGIN ISOLATION LEVEL <lvl> READ WRITE|READ ONLY
    SELECT set_config('search_path', $1, true), set_config('role', $2, true), ...   -- one statement
    SELECT "hooks"."pre_request"()                                                -- if configured
    WITH pgrst_source AS (...) SELECT ... AS body, ... AS response_headers, ...   -- main query, §1.3
    COMMIT                                  -- ABORT on any error, then map the SQLSTATE (§2)

:class:`AsyncPostgrestEmulator` does the same on a ``psycopg.AsyncConnection`` (load tools); both
build their statements with one shared core (:class:`RequestPlan`) and map errors with the same code.

Nothing here runs a session-level ``SET``: every per-request value is ``set_config(..., true)``,
so the connection is clean after each request (as required under PgBouncer, contract §6).

Example::

    api = connect_emulator("postgresql://authenticator@localhost/pgvote", pre_request="hooks.pre_request")
    r = api.rpc("cast_vote", {"poll_id": pid, "option_ids": [oid], "voter_fingerprint": "fp-1"})
    assert r.status == 200 and r.json()["status"] == "recorded"
    r = api.rpc("poll_results", {"poll_id": pid}, method="GET", claims={"role": "authenticated", "sub": "u1"})
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import itertools
import json
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader

__all__ = [
    "AsyncPostgrestEmulator",
    "Headers",
    "PostgrestEmulator",
    "RequestPlan",
    "Response",
    "Routine",
    "RoutineParam",
    "connect_async_emulator",
    "connect_emulator",
    "http_status_for",
]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
#: ``db-hoisted-tx-settings`` default (v12.2+, contract §1.1 step 2).
HOISTED_TX_SETTINGS = frozenset({"statement_timeout", "plan_filter.statement_cost_limit", "default_transaction_isolation"})
#: Value PostgREST puts in ``Retry-After`` on 503s: its reconnect back-off, 0 while the pool is healthy (§2).
RETRY_AFTER = "0"
#: hasql-transaction retries 40001/40P01 without bound (contract §1.1 step 6); we cap it to keep tests finite.
MAX_TX_RETRIES = 100
_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})
_ISOLATION = {"serializable": "SERIALIZABLE", "repeatable read": "REPEATABLE READ"}


class Headers(dict[str, str]):
    """A plain ``dict`` whose lookups ignore case, as HTTP header names do."""

    def _key(self, name: str) -> str | None:
        low = name.lower()
        return next((k for k in self.keys() if k.lower() == low), None)

    def __getitem__(self, name: str) -> str:
        key = self._key(name)
        if key is None:
            raise KeyError(name)
        return super().__getitem__(key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) is not None

    def get(self, name: str, default: Any = None) -> Any:
        key = self._key(name)
        return default if key is None else super().__getitem__(key)

    def put(self, name: str, value: str) -> None:
        """Set ``name``, replacing a header of the same name in any case."""
        key = self._key(name)
        if key is not None:
            del self[key]
        self[name] = value


@dataclass(frozen=True)
class Response:
    """What PostgREST would answer: status, headers, parsed JSON body (``None`` for 204/HEAD)."""

    status: int
    headers: dict[str, str]
    body: Any
    sqlstate: str | None = None  # set when the database raised the error

    def json(self) -> Any:
        return self.body


# --------------------------------------------------------------------------------------------
# Error mapping (contract §2; ``pgErrorStatus`` in Error.hs)

def http_status_for(sqlstate: str, message: str, is_anonymous: bool, *, detail: str | None = None) -> int:
    """HTTP status PostgREST v13.0.1+ gives a database error (contract §2 table, row by row).

    ``is_anonymous`` is PostgREST's ``Just authRole /= db-anon-role`` negated: the request ran as
    the anonymous role. ``detail`` is only read for SQLSTATE ``PGRST`` (status from the DETAIL JSON,
    500 when unparseable = PGRST121).
    """
    c = sqlstate
    if c.startswith("08"):
        return 503
    if c.startswith("09"):
        return 500
    if c.startswith(("0L", "0P")):
        return 403
    if c in ("23503", "23505"):
        return 409
    if c == "25006":
        return 405
    if c == "21000":
        return 400 if message.endswith("requires a WHERE clause") else 500
    if c == "22023":
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if c.startswith("25"):
        return 500
    if c.startswith("28"):
        return 403
    if c.startswith(("2D", "38", "39", "3B", "40")):
        return 500
    if c == "53400":
        return 500
    if c.startswith("53"):
        return 503
    if c.startswith("54"):
        return 413  # as PostgREST 12.0.2 (the binary the project runs) does; 13 answers 500
    if c.startswith("55"):
        return 500
    if c == "57P01":
        return 503
    if c.startswith(("57", "58", "F0", "HV")):
        return 500
    if c == "P0001":
        return 400
    if c.startswith(("P0", "XX")):
        return 500
    if c == "42883":
        return 406 if message.startswith("function xmlagg(") else 404
    if c == "42P01":
        return 404
    if c == "42P17":
        return 500
    if c == "42501":
        return 401 if is_anonymous else 403
    if c.startswith("PT"):
        return int(c[2:]) if c[2:].isdigit() else 500
    if c == "PGRST":
        parsed = _parse_raise_pgrst(message, detail)
        return parsed[1]["status"] if isinstance(parsed, tuple) else 500
    return 400


def _parse_raise_pgrst(message: str, detail: str | None) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """Parse ``RAISE SQLSTATE 'PGRST'`` MESSAGE/DETAIL (contract §2 "Full control"; ``parseRaisePGRST``).

    Returns ``(message_obj, detail_obj)`` or, when invalid, the PGRST121 ``details`` text.
    MESSAGE needs string ``code`` and ``message`` (``details``/``hint`` optional strings);
    DETAIL needs an integer ``status`` and a string-to-string ``headers`` object.
    """
    def opt_str(obj: dict[str, Any], key: str) -> bool:
        return obj.get(key) is None or isinstance(obj[key], str)

    msg = _loads_or_none(message)
    if not (isinstance(msg, dict) and isinstance(msg.get("code"), str) and isinstance(msg.get("message"), str)
            and opt_str(msg, "details") and opt_str(msg, "hint")):
        return f"Invalid JSON value for MESSAGE: '{message}'"
    if detail is None:
        return "DETAIL is missing in the RAISE statement"
    det = _loads_or_none(detail)
    status, headers = (det.get("status"), det.get("headers")) if isinstance(det, dict) else (None, None)
    if isinstance(status, float) and status.is_integer():
        status = int(status)  # Aeson reads 404.0 as an Int
    if not (isinstance(status, int) and not isinstance(status, bool) and isinstance(headers, dict)
            and all(isinstance(v, str) for v in headers.values()) and opt_str(det, "status_text")):
        return f"Invalid JSON value for DETAIL: '{detail}'"
    return msg, {**det, "status": status}


def _loads_or_none(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def _error(status: int, code: str, message: str, details: str | None = None, hint: str | None = None,
           *, headers: Mapping[str, str] | None = None, sqlstate: str | None = None) -> Response:
    """Error response: body with exactly code/message/details/hint, ``Proxy-Status`` (v13), ``Retry-After`` on 503."""
    out = Headers({"Content-Type": JSON_CONTENT_TYPE, "Proxy-Status": f"PostgREST; error={code}"})
    for name, value in (headers or {}).items():
        out.put(name, value)
    if status == 503 and "Retry-After" not in out:
        out.put("Retry-After", RETRY_AFTER)
    body = {"code": code, "message": message, "details": details, "hint": hint}
    return Response(status, out, body, sqlstate)


def _db_error(exc: psycopg.Error, is_anonymous: bool) -> Response:
    """Map a database error to PostgREST's answer (contract §2)."""
    diag = exc.diag
    sqlstate = exc.sqlstate
    if sqlstate is None:  # connection lost / client-side failure: hasql ClientError → 503 PGRST001
        return _error(503, "PGRST001", "Database client error. Retrying the connection.", str(exc))
    message = diag.message_primary or str(exc)
    if sqlstate == "PGRST":
        parsed = _parse_raise_pgrst(message, diag.message_detail)
        if isinstance(parsed, str):
            hint = ("MESSAGE must be a JSON object with obligatory keys: 'code', 'message' and optional keys: "
                    "'details', 'hint'." if parsed.startswith("Invalid JSON value for MESSAGE") else
                    "DETAIL must be a JSON object with obligatory keys: 'status', 'headers' and optional key: "
                    "'status_text'.")
            return _error(500, "PGRST121", "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
                          parsed, hint, sqlstate=sqlstate)
        msg, det = parsed
        return _error(det["status"], msg["code"], msg["message"], msg.get("details"), msg.get("hint"),
                      headers=det["headers"], sqlstate=sqlstate)
    status = http_status_for(sqlstate, message, is_anonymous)
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, sqlstate, message, diag.message_detail, diag.message_hint, headers=extra,
                  sqlstate=sqlstate)


# --------------------------------------------------------------------------------------------
# Schema cache (contract §1.2; ``funcsSqlQuery`` in SchemaCache.hs)

@dataclass(frozen=True)
class RoutineParam:
    name: str  # '' for an unnamed parameter
    type: str  # type::regtype::text
    cast_type: str  # same, with character→character varying and bit→bit varying (used in SQL)
    required: bool  # no default
    variadic: bool


@dataclass(frozen=True)
class Routine:
    schema: str
    name: str
    params: tuple[RoutineParam, ...]
    volatility: str  # pg_proc.provolatile: 'v', 's' or 'i'
    returns_setof: bool
    returns_composite: bool  # composite type, OUT/INOUT or TABLE parameters
    returns_void: bool
    isolation_level: str | None  # from SET default_transaction_isolation, lower case
    settings: tuple[tuple[str, str], ...]  # other proconfig entries (values lower-cased, as PostgREST does)


_ROUTINES_SQL = """
WITH RECURSIVE recurse AS (
    SELECT oid, typbasetype, COALESCE(NULLIF(typbasetype, 0), oid) AS base FROM pg_type
    UNION
    SELECT t.oid, b.typbasetype, COALESCE(NULLIF(b.typbasetype, 0), b.oid) AS base
    FROM recurse t JOIN pg_type b ON t.typbasetype = b.oid
),
base_types AS (SELECT oid, base FROM recurse WHERE typbasetype = 0),
arguments AS (
    SELECT oid,
           array_agg(COALESCE(name, '') ORDER BY idx) AS names,
           array_agg(type::regtype::text ORDER BY idx) AS types,
           array_agg(CASE type
                       WHEN 'bit'::regtype THEN 'bit varying'
                       WHEN 'bit[]'::regtype THEN 'bit varying[]'
                       WHEN 'character'::regtype THEN 'character varying'
                       WHEN 'character[]'::regtype THEN 'character varying[]'
                       ELSE type::regtype::text
                     END ORDER BY idx) AS cast_types,
           array_agg(idx <= (pronargs - pronargdefaults) ORDER BY idx) AS required,
           array_agg(COALESCE(mode = 'v', false) ORDER BY idx) AS variadic,
           CASE COUNT(*) - COUNT(name)
             WHEN 0 THEN true
             WHEN 1 THEN (array_agg(type))[1] IN ('bytea'::regtype, 'json'::regtype, 'jsonb'::regtype,
                                                  'text'::regtype, 'xml'::regtype)
             ELSE false
           END AS callable
    FROM pg_proc, unnest(proargnames, proargtypes, proargmodes) WITH ORDINALITY AS _ (name, type, mode, idx)
    WHERE type IS NOT NULL AND pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s) AND proname = %(name)s
    GROUP BY oid
)
SELECT COALESCE(a.names, '{}'), COALESCE(a.types, '{}'), COALESCE(a.cast_types, '{}'),
       COALESCE(a.required, '{}'), COALESCE(a.variadic, '{}'),
       p.provolatile::text,
       p.proretset,
       (t.typtype = 'c' OR COALESCE(p.proargmodes::text[] && '{t,b,o}', false)),
       (tn.nspname = 'pg_catalog' AND t.typname = 'void'),
       lower((regexp_split_to_array((regexp_split_to_array(iso_config, '='))[2], ','))[1]),
       COALESCE(settings.kvs, '{}')
FROM pg_proc p
LEFT JOIN arguments a ON a.oid = p.oid
JOIN base_types bt ON bt.oid = p.prorettype
JOIN pg_type t ON t.oid = bt.base
JOIN pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN LATERAL unnest(p.proconfig) iso_config ON iso_config LIKE 'default_transaction_isolation%%'
LEFT JOIN LATERAL (
    SELECT array_agg(ARRAY[substr(setting, 1, strpos(setting, '=') - 1),
                           lower(substr(setting, strpos(setting, '=') + 1))]) AS kvs
    FROM unnest(p.proconfig) setting
    WHERE setting NOT LIKE 'default_transaction_isolation%%'
) settings ON true
WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s) AND p.proname = %(name)s AND p.prokind = 'f'
  AND t.oid <> 'trigger'::regtype AND COALESCE(a.callable, true)
ORDER BY p.oid
"""


# --------------------------------------------------------------------------------------------
# The emulators: one shared core (schema cache, overload resolution, statement construction),
# a blocking and an asyncio front end that only differ in how they send the statements.

@dataclass(frozen=True)
class RequestPlan:
    """Every statement PostgREST sends for one request, built before any I/O (contract §1.1).

    Shared by :class:`PostgrestEmulator` and :class:`AsyncPostgrestEmulator`: they run
    ``statements()`` in order inside one transaction, read the main query's row, COMMIT, and turn
    the row (:meth:`response`) or the error (:meth:`error`) into PostgREST's answer.
    """

    routine: Routine
    method: str
    begin: str
    set_locals: tuple[str, list[Any]]  # SQL text (rendered once per shape) and bind values
    hook: str | None
    main: tuple[str, list[Any]]
    is_anonymous: bool

    def statements(self) -> list[tuple[Any, Any]]:
        """``(query, params)`` in order: BEGIN, the locals, the pre-request hook, the main query (last)."""
        out: list[tuple[Any, Any]] = [(self.begin, None), self.set_locals]
        if self.hook is not None:
            out.append((self.hook, None))
        out.append(self.main)
        return out

    def response(self, row: tuple[Any, ...]) -> Response:
        return _success(self.routine, self.method, row)

    def error(self, exc: psycopg.Error) -> Response:
        return _db_error(exc, is_anonymous=self.is_anonymous)


def _should_retry(exc: psycopg.Error, attempt: int) -> bool:
    """hasql-transaction re-runs the whole transaction on 40001/40P01 (contract §1.1 step 6), capped here."""
    return exc.sqlstate in _RETRIED_SQLSTATES and attempt < MAX_TX_RETRIES


_FUNCTION_NAMES_SQL = ("SELECT DISTINCT p.proname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                       "WHERE n.nspname = %s AND p.prokind = 'f'")


class _EmulatorCore:
    """What a PostgREST instance knows and computes without talking to the database.

    ``schema`` is the exposed schema (first of ``db-schemas``), ``extra_search_path`` is
    ``db-extra-search-path``, ``anon_role`` is ``db-anon-role`` and ``pre_request`` is
    ``db-pre-request`` (``"schema.fn"``). ``schema_cache`` may be shared between instances (load
    tools open thousands of connections; the function definitions are read once).
    """

    def __init__(self, *, schema: str = "api", extra_search_path: tuple[str, ...] = ("public",),
                 anon_role: str | None = "anon", pre_request: str | None = None,
                 schema_cache: dict[tuple[str, str], tuple[Routine, ...]] | None = None) -> None:
        self.schema = schema
        self.extra_search_path = tuple(extra_search_path)
        self.anon_role = anon_role
        self.pre_request = pre_request
        self._cache: dict[tuple[str, str], tuple[Routine, ...]] = {} if schema_cache is None else schema_cache

    def reload_schema_cache(self) -> None:
        """Forget cached function definitions (PostgREST: ``NOTIFY pgrst, 'reload schema'``, contract §5)."""
        self._cache.clear()

    def _remember(self, fn: str, rows: list[tuple[Any, ...]]) -> tuple[Routine, ...]:
        """Cache the overloads read from ``_ROUTINES_SQL``; a miss is not cached (a later CREATE is found)."""
        found = tuple(_routine_from_row(self.schema, fn, row) for row in rows)
        if found:
            self._cache[(self.schema, fn)] = found
        return found

    def _authenticate(self, method: str, claims: Mapping[str, Any] | None
                      ) -> tuple[str, dict[str, Any]] | Response:
        """Method check and role/claims resolution, before anything else (contract §5; ``parseClaims``)."""
        if method not in ("POST", "GET", "HEAD"):
            return _error(405, "PGRST101", f"Cannot use the {method} method on RPC")
        role = self.anon_role if claims is None else claims.get("role", self.anon_role)
        if role is None:
            return _error(401, "PGRST302", "Anonymous access is disabled", headers={"WWW-Authenticate": "Bearer"})
        return role, ({"role": role} if claims is None else {**claims, "role": role})

    def _resolve(self, fn: str, keys: set[str], candidates: tuple[Routine, ...], *,
                 is_post: bool) -> tuple[Routine, bool] | Response | None:
        """``findProc`` (Plan.hs): match keys to parameters; fall back to one unnamed json/jsonb param (§1.2).

        Returns ``(routine, called_with_single_unnamed_param)``, a PGRST202/PGRST203 response, or
        ``None`` when no function of that name exists (the caller reads the names for the hint and
        calls :meth:`_no_rpc_error`).
        """
        matches = [r for r in candidates if _keys_match(r.params, keys)]
        fallback = [r for r in candidates if is_post and len(r.params) == 1 and r.params[0].name == ""
                    and r.params[0].type in ("json", "jsonb")]
        if len(matches) == 1:
            return matches[0], False
        if not matches and len(fallback) == 1:
            return fallback[0], True
        if matches or fallback:
            listed = ", ".join(
                f"{r.schema}.{r.name}(" + ", ".join(f"{p.name} => {p.type}" for p in r.params) + ")"
                for r in (matches or fallback))
            return _error(300, "PGRST203", f"Could not choose the best candidate function between: {listed}", None,
                          "Try renaming the parameters or the function itself in the database so function "
                          "overloading can be resolved")
        if not candidates:
            return None
        return self._no_rpc_error(fn, sorted(keys), candidates, is_post, [])

    def _no_rpc_error(self, fn: str, keys: list[str], candidates: tuple[Routine, ...], is_post: bool,
                      names: list[str]) -> Response:
        """PGRST202 404 with PostgREST's message/details; hint approximates its fuzzy match (Error.hs ``NoRpc``).

        ``names`` are the function names of the schema (only read when ``candidates`` is empty).
        """
        func = f"{self.schema}.{fn}"
        listed = ", ".join(keys)
        message = f"Could not find the function {func}" + (f"({listed})" if keys else " without parameters")
        searched = ((" with parameter" + ("s " if len(keys) > 1 else " ") + listed) if keys
                    else " without parameters")
        if is_post:
            searched += " or with a single unnamed json/jsonb parameter"
        details = f"Searched for the function {func}{searched}, but no matches were found in the schema cache."
        if candidates:  # the name exists: suggest the closest parameter list
            lists = ["(" + ", ".join(sorted(p.name for p in r.params)) + ")" for r in candidates]
            best = difflib.get_close_matches("(" + listed + ")", lists, n=1, cutoff=0.5)
            hint = f"Perhaps you meant to call the function {func}{best[0]}" if best else None
        else:
            best = difflib.get_close_matches(fn, names, n=1, cutoff=0.5)
            hint = f"Perhaps you meant to call the function {self.schema}.{best[0]}" if best else None
        return _error(404, "PGRST202", message + " in the schema cache", details, hint)

    def _plan(self, found: tuple[Routine, bool], fn: str, args: Mapping[str, Any], method: str, role: str,
              jwt_claims: Mapping[str, Any], with_token: bool, headers: Mapping[str, str] | None,
              cookies: Mapping[str, str] | None) -> RequestPlan:
        """The statements of one request (contract §1.1, §1.3)."""
        routine, single_param = found
        req_headers, req_cookies = _request_headers(headers, cookies, with_token=with_token)
        begin = _begin_statement(routine, read_only=method != "POST" or routine.volatility in ("s", "i"))
        set_locals = (_locals_text(_hoisted_count(routine)),
                      self._locals_values(routine, role, jwt_claims, method, fn, req_headers, req_cookies))
        hook = _hook_text(self.pre_request) if self.pre_request else None
        main = (_main_query_text(routine, _given_names(routine, args, single_param), method, single_param),
                _main_params(routine, args, method, single_param))
        return RequestPlan(routine, method, begin, set_locals, hook, main,
                           is_anonymous=role == self.anon_role)

    def _locals_statement(self, routine: Routine, role: str, claims: Mapping[str, Any], method: str, fn: str,
                          headers: Mapping[str, str], cookies: Mapping[str, str]) -> tuple[sql.Composed, list[str]]:
        """The single ``set_config(..., true)`` statement, in ``setPgLocals`` order (contract §1.1 step 2)."""
        return _locals_sql(_hoisted_count(routine)), self._locals_values(routine, role, claims, method, fn,
                                                                          headers, cookies)

    def _locals_values(self, routine: Routine, role: str, claims: Mapping[str, Any], method: str, fn: str,
                       headers: Mapping[str, str], cookies: Mapping[str, str]) -> list[str]:
        """Bind values of :meth:`_locals_statement`, in its order."""
        values = [", ".join(_escape_ident(s) for s in (self.schema, *self.extra_search_path)), role, _json(claims),
                  method, f"/rpc/{fn}", _json(headers), _json(cookies)]
        for name, value in routine.settings:  # hoisted function settings (db-hoisted-tx-settings)
            if name in HOISTED_TX_SETTINGS:
                values += [name, value]
        return values


class PostgrestEmulator(_EmulatorCore):
    """One PostgREST instance using one pooled connection (``db-prepared-statements = false``).

    ``conn`` must be logged in as the authenticator role with ``autocommit=True``. ``schema`` is the
    exposed schema (first of ``db-schemas``), ``extra_search_path`` is ``db-extra-search-path``,
    ``anon_role`` is ``db-anon-role`` and ``pre_request`` is ``db-pre-request`` (``"schema.fn"``).
    Requests on one instance are serialised by a lock; use one instance per thread for concurrency.
    """

    def __init__(self, conn: psycopg.Connection, *, schema: str = "api", extra_search_path: tuple[str, ...] = ("public",),
                 anon_role: str | None = "anon", pre_request: str | None = None,
                 schema_cache: dict[tuple[str, str], tuple[Routine, ...]] | None = None) -> None:
        if not conn.autocommit:
            raise ValueError("PostgrestEmulator needs an autocommit connection (it sends BEGIN/COMMIT itself)")
        super().__init__(schema=schema, extra_search_path=extra_search_path, anon_role=anon_role,
                         pre_request=pre_request, schema_cache=schema_cache)
        self.conn = conn
        self._lock = threading.Lock()

    # -- schema cache ------------------------------------------------------------------------
    def routines(self, fn: str) -> tuple[Routine, ...]:
        """All overloads of ``schema.fn`` PostgREST could call (``prokind='f'``, callable; §1.2).

        Cached per (schema, fn) until :meth:`reload_schema_cache`. A miss is not cached, so a
        function created later is found without a reload (a real PostgREST would need one).
        """
        key = (self.schema, fn)
        if key not in self._cache:
            with self.conn.cursor() as cur:
                cur.execute(_ROUTINES_SQL, {"schema": self.schema, "name": fn}, prepare=False)
                return self._remember(fn, cur.fetchall())
        return self._cache[key]

    # -- requests ----------------------------------------------------------------------------
    def rpc(self, fn: str, body: Mapping[str, Any] | None = None, *, claims: Mapping[str, Any] | None = None,
            method: str = "POST", headers: Mapping[str, str] | None = None,
            cookies: Mapping[str, str] | None = None) -> Response:
        """Emulate ``<method> /rpc/<fn>``.

        POST: ``body`` is the JSON object body (``None`` = empty body = ``{}``). GET/HEAD: ``body`` holds the
        query-string arguments; values are sent as text (lists as array literals ``{a,b}``).
        ``claims`` is the verified JWT payload (``None`` = no ``Authorization`` header = anonymous).
        """
        method = method.upper()
        auth = self._authenticate(method, claims)
        if isinstance(auth, Response):
            return auth
        role, jwt_claims = auth
        args = dict(body or {})
        with self._lock:
            return self._call(fn, args, method, role, jwt_claims, claims is not None, headers, cookies)

    # -- internals -------------------------------------------------------------------------
    def _call(self, fn: str, args: dict[str, Any], method: str, role: str, jwt_claims: Mapping[str, Any],
              with_token: bool, headers: Mapping[str, str] | None, cookies: Mapping[str, str] | None) -> Response:
        # Overload resolution from the argument keys, before the database (§1.2).
        found = self._find_routine(fn, set(args), is_post=method == "POST")
        if isinstance(found, Response):
            return found
        plan = self._plan(found, fn, args, method, role, jwt_claims, with_token, headers, cookies)
        try:
            row = self._transaction(plan)
        except psycopg.Error as exc:
            return plan.error(exc)
        return plan.response(row)

    def _find_routine(self, fn: str, keys: set[str], *, is_post: bool) -> tuple[Routine, bool] | Response:
        """Overload resolution (see ``_EmulatorCore._resolve``): a routine or a PGRST202/PGRST203 response."""
        resolved = self._resolve(fn, keys, self.routines(fn), is_post=is_post)
        if resolved is not None:
            return resolved
        with self.conn.cursor() as cur:
            cur.execute(_FUNCTION_NAMES_SQL, (self.schema,), prepare=False)
            names = [r[0] for r in cur.fetchall()]
        return self._no_rpc_error(fn, sorted(keys), (), is_post, names)

    def _transaction(self, plan: RequestPlan) -> tuple[Any, ...]:
        """Run BEGIN, the statements, the pre-request hook and COMMIT; retry 40001/40P01 like hasql (§1.1)."""
        for attempt in itertools.count():
            try:
                with self.conn.cursor() as cur:
                    cur.adapters.register_loader("json", TextLoader)  # keep the body as PostgreSQL's text
                    for query, params in plan.statements():
                        cur.execute(query, params, prepare=False)
                    row = cur.fetchone()
                    cur.execute("COMMIT", prepare=False)
                assert row is not None
                return row
            except psycopg.Error as exc:
                self._abort()
                if _should_retry(exc, attempt):
                    continue
                raise
        raise AssertionError("unreachable")

    def _abort(self) -> None:
        if self.conn.closed or self.conn.info.transaction_status == TransactionStatus.IDLE:
            return
        try:
            self.conn.execute("ABORT", prepare=False)  # what hasql-transaction sends (= ROLLBACK)
        except psycopg.Error:
            pass


class AsyncPostgrestEmulator(_EmulatorCore):
    """:class:`PostgrestEmulator` on a ``psycopg.AsyncConnection``: the same statements and answers.

    For load tools that keep thousands of client connections busy from one event loop. Requests on
    one instance are serialised by an ``asyncio.Lock``; use one instance per concurrent client.
    """

    def __init__(self, conn: psycopg.AsyncConnection, *, schema: str = "api",
                 extra_search_path: tuple[str, ...] = ("public",), anon_role: str | None = "anon",
                 pre_request: str | None = None,
                 schema_cache: dict[tuple[str, str], tuple[Routine, ...]] | None = None) -> None:
        if not conn.autocommit:
            raise ValueError("AsyncPostgrestEmulator needs an autocommit connection (it sends BEGIN/COMMIT itself)")
        super().__init__(schema=schema, extra_search_path=extra_search_path, anon_role=anon_role,
                         pre_request=pre_request, schema_cache=schema_cache)
        self.conn = conn
        self._lock = asyncio.Lock()

    async def routines(self, fn: str) -> tuple[Routine, ...]:
        """As :meth:`PostgrestEmulator.routines`."""
        key = (self.schema, fn)
        if key not in self._cache:
            async with self.conn.cursor() as cur:
                await cur.execute(_ROUTINES_SQL, {"schema": self.schema, "name": fn}, prepare=False)
                return self._remember(fn, await cur.fetchall())
        return self._cache[key]

    async def rpc(self, fn: str, body: Mapping[str, Any] | None = None, *, claims: Mapping[str, Any] | None = None,
                  method: str = "POST", headers: Mapping[str, str] | None = None,
                  cookies: Mapping[str, str] | None = None) -> Response:
        """As :meth:`PostgrestEmulator.rpc`. A lost connection answers 503 PGRST001, as PostgREST does."""
        method = method.upper()
        auth = self._authenticate(method, claims)
        if isinstance(auth, Response):
            return auth
        role, jwt_claims = auth
        args = dict(body or {})
        async with self._lock:
            found = await self._find_routine(fn, set(args), is_post=method == "POST")
            if isinstance(found, Response):
                return found
            plan = self._plan(found, fn, args, method, role, jwt_claims, claims is not None, headers, cookies)
            try:
                row = await self._transaction(plan)
            except psycopg.Error as exc:
                return plan.error(exc)
            return plan.response(row)

    async def _find_routine(self, fn: str, keys: set[str], *, is_post: bool) -> tuple[Routine, bool] | Response:
        resolved = self._resolve(fn, keys, await self.routines(fn), is_post=is_post)
        if resolved is not None:
            return resolved
        async with self.conn.cursor() as cur:
            await cur.execute(_FUNCTION_NAMES_SQL, (self.schema,), prepare=False)
            names = [r[0] for r in await cur.fetchall()]
        return self._no_rpc_error(fn, sorted(keys), (), is_post, names)

    async def _transaction(self, plan: RequestPlan) -> tuple[Any, ...]:
        """As :meth:`PostgrestEmulator._transaction`."""
        for attempt in itertools.count():
            try:
                async with self.conn.cursor() as cur:
                    cur.adapters.register_loader("json", TextLoader)
                    for query, params in plan.statements():
                        await cur.execute(query, params, prepare=False)
                    row = await cur.fetchone()
                    await cur.execute("COMMIT", prepare=False)
                assert row is not None
                return row
            except psycopg.Error as exc:
                await self._abort()
                if _should_retry(exc, attempt):
                    continue
                raise
        raise AssertionError("unreachable")

    async def _abort(self) -> None:
        if self.conn.closed or self.conn.info.transaction_status == TransactionStatus.IDLE:
            return
        try:
            await self.conn.execute("ABORT", prepare=False)
        except psycopg.Error:
            pass


def connect_emulator(url: str, **kw: Any) -> PostgrestEmulator:
    """Open an autocommit connection to ``url`` (log in as the authenticator) and wrap it."""
    return PostgrestEmulator(psycopg.connect(url, autocommit=True), **kw)


async def connect_async_emulator(url: str, *, connect_timeout: float | None = None,
                                 **kw: Any) -> AsyncPostgrestEmulator:
    """Open an autocommit ``AsyncConnection`` to ``url`` (as the authenticator) and wrap it."""
    extra: dict[str, Any] = {} if connect_timeout is None else {"connect_timeout": max(1, int(connect_timeout))}
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None, **extra)
    return AsyncPostgrestEmulator(conn, **kw)

# --------------------------------------------------------------------------------------------
# Statement building (contract §1.1 step 1 and §1.3)

def _routine_from_row(schema: str, name: str, row: tuple[Any, ...]) -> Routine:
    names, types, cast_types, required, variadic, volatility, setof, composite, void, iso, kvs = row
    params = tuple(RoutineParam(*fields) for fields in zip(names, types, cast_types, required, variadic))
    return Routine(schema, name, params, volatility, setof, composite, void, iso, tuple((k, v) for k, v in kvs))


def _keys_match(params: tuple[RoutineParam, ...], keys: set[str]) -> bool:
    """``matchesParams`` (Plan.hs): extra or missing keys mean no match (contract §1.2)."""
    if not params:
        return not keys
    required = {p.name for p in params if p.required}
    optional = {p.name for p in params if not p.required}
    if not optional:
        return keys == required
    if not required:
        return keys <= optional
    return keys - optional == required


def _hoisted_count(routine: Routine) -> int:
    return sum(1 for name, _ in routine.settings if name in HOISTED_TX_SETTINGS)


@functools.lru_cache(maxsize=16)
def _locals_sql(hoisted: int) -> sql.Composed:
    """``select set_config('search_path', $1, true), ... set_config('request.cookies', $7, true)`` + hoisted pairs."""
    ph = sql.Placeholder()
    names = ("search_path", "role", "request.jwt.claims", "request.method", "request.path", "request.headers",
             "request.cookies")
    calls = [sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), ph) for name in names]
    calls += [sql.SQL("set_config({}, {}, true)").format(ph, ph)] * hoisted
    return sql.SQL("select {}").format(sql.SQL(", ").join(calls))


def _begin_statement(routine: Routine, *, read_only: bool) -> str:
    """``BEGIN ISOLATION LEVEL <lvl> <mode>`` (contract §1.1 step 1; role-level isolation not emulated)."""
    level = _ISOLATION.get(routine.isolation_level or "", "READ COMMITTED")
    return f"BEGIN ISOLATION LEVEL {level} {'READ ONLY' if read_only else 'READ WRITE'}"


def _main_query(routine: Routine, args: Mapping[str, Any], method: str,
                single_param: bool) -> tuple[sql.Composed, list[Any]]:
    """``callPlanToQuery`` wrapped by ``prepareCall`` (contract §1.3), returning SQL and bind values.

    The SQL depends only on the routine, the argument keys present and the method (it is built
    once per such combination, :func:`_main_query_sql`); the bind values carry the request.
    """
    return _main_query_sql(routine, _given_names(routine, args, single_param), method, single_param), \
        _main_params(routine, args, method, single_param)


def _given_names(routine: Routine, args: Mapping[str, Any], single_param: bool) -> tuple[str, ...]:
    """Parameters present in the request, in declared order (absent ones take their defaults)."""
    return () if single_param else tuple(p.name for p in routine.params if p.name in args)


def _main_params(routine: Routine, args: Mapping[str, Any], method: str, single_param: bool) -> list[Any]:
    """Bind values of the main query: the JSON body once (POST, single param), else one text per argument."""
    if single_param:
        return [_json(args)]
    given = [p for p in routine.params if p.name in args]
    if not given:
        return []
    if method == "POST":
        return [_json(args)]
    return [[_query_text(v) for v in args[p.name]] if p.variadic and isinstance(args[p.name], (list, tuple))
            else _query_text(args[p.name]) for p in given]


@functools.lru_cache(maxsize=1024)
def _main_query_sql(routine: Routine, names: tuple[str, ...], method: str, single_param: bool) -> sql.Composed:
    """The main query's SQL for these present parameters (``names``, declared order); see :func:`_main_query`."""
    fn = sql.Identifier(routine.schema, routine.name)
    scalar = not routine.returns_composite
    ph = sql.Placeholder()

    def call(arguments: sql.Composable) -> sql.Composed:
        if scalar:
            return sql.SQL("(SELECT {}({}) pgrst_scalar) pgrst_call").format(fn, arguments)
        return sql.SQL("{}({}) pgrst_call").format(fn, arguments)

    if single_param:  # one unnamed json/jsonb parameter receives the raw body
        source = sql.SQL("FROM {}").format(call(sql.SQL("{}::{}").format(ph, sql.SQL(routine.params[0].cast_type))))
    else:
        given = [p for p in routine.params if p.name in names]  # declared order, only keys present
        if not given:
            source = sql.SQL("FROM {}").format(call(sql.SQL("")))
        elif method == "POST":
            idents = sql.SQL(", ").join(sql.Identifier(p.name) for p in given)
            typed = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL(p.cast_type))
                                       for p in given)
            named = sql.SQL(", ").join(
                sql.SQL("{}{} := pgrst_body.{}").format(sql.SQL("VARIADIC " if p.variadic else ""),
                                                       sql.Identifier(p.name), sql.Identifier(p.name))
                for p in given)
            source = sql.SQL(
                "FROM (SELECT {}::json AS json_data) pgrst_payload, "
                "LATERAL (SELECT {} FROM json_to_record(pgrst_payload.json_data) AS _({}) LIMIT 1) pgrst_body , "
                "LATERAL {}").format(ph, idents, typed, call(named))
        else:  # GET/HEAD, v13: "p" := $n::<type>
            parts = [sql.SQL("{}{} := {}::{}").format(sql.SQL("VARIADIC " if p.variadic else ""),
                                                      sql.Identifier(p.name), ph, sql.SQL(p.cast_type))
                     for p in given]
            source = sql.SQL("FROM {}").format(call(sql.SQL(", ").join(parts)))

    selected = sql.SQL("pgrst_call.pgrst_scalar" if scalar else '"pgrst_call".*')
    if not routine.returns_setof:
        agg = "coalesce(json_agg(_postgrest_t.pgrst_scalar)->0, 'null')" if scalar \
            else "coalesce(json_agg(_postgrest_t)->0, 'null')"
    else:
        agg = "coalesce(json_agg(_postgrest_t.pgrst_scalar), '[]')" if scalar \
            else "coalesce(json_agg(_postgrest_t), '[]')"
    return sql.SQL(
        "WITH pgrst_source AS (SELECT {selected} {source}) "
        "SELECT null::bigint AS total_result_set, {page_total} AS page_total, {agg} AS body, "
        "nullif(current_setting('response.headers', true), '') AS response_headers, "
        "nullif(current_setting('response.status', true), '') AS response_status, "
        "'' AS response_inserted "
        "FROM (SELECT {alias}.* FROM \"pgrst_source\" AS {alias}) _postgrest_t"
    ).format(selected=selected, source=source,
             page_total=sql.SQL("pg_catalog.count(_postgrest_t)" if routine.returns_setof else "1"),
             agg=sql.SQL(agg), alias=sql.Identifier(routine.name))


@functools.lru_cache(maxsize=1024)
def _main_query_text(routine: Routine, names: tuple[str, ...], method: str, single_param: bool) -> str:
    """:func:`_main_query_sql` rendered once (psycopg then caches its own ``%s`` → ``$n`` conversion)."""
    return _main_query_sql(routine, names, method, single_param).as_string(None)


@functools.lru_cache(maxsize=16)
def _locals_text(hoisted: int) -> str:
    return _locals_sql(hoisted).as_string(None)


@functools.lru_cache(maxsize=16)
def _hook_text(pre_request: str) -> str:
    """``select "schema"."fn"()`` for ``db-pre-request`` (contract §4)."""
    schema, _, name = pre_request.rpartition(".")
    ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    return sql.SQL("select {}()").format(ident).as_string(None)


def _success(routine: Routine, method: str, row: tuple[Any, ...]) -> Response:
    """Status/headers of a committed call (contract §1.3 "HTTP" and §3; ``actionResponse`` in Response.hs).

    The GUCs are validated after COMMIT, as PostgREST does, so a bad ``response.status`` (PGRST112)
    or ``response.headers`` (PGRST111) yields a 500 although the transaction's writes persist.
    """
    _total, page_total, body_text, guc_headers, guc_status, _inserted = row
    headers = Headers()
    headers["Content-Range"] = f"0-{page_total - 1}/*" if page_total else "*/*"
    status, body = 200, None
    if routine.returns_void:
        status = 204
    else:
        if method != "HEAD":
            body = json.loads(body_text)
            headers["Content-Length"] = str(len(body_text.encode()))
        headers["Content-Type"] = JSON_CONTENT_TYPE

    if guc_status is not None:
        digits = re.match(r"[0-9]+", guc_status)  # Data.Text.Read.decimal: leading digits
        if digits is None:
            return _error(500, "PGRST112", "response.status guc must be a valid status code")
        status = int(digits.group())
    if guc_headers is not None:
        parsed = _loads_or_none(guc_headers)
        if not (isinstance(parsed, list) and all(isinstance(h, dict) and len(h) == 1
                                                 and isinstance(next(iter(h.values())), str) for h in parsed)):
            return _error(500, "PGRST111", "response.headers guc must be a JSON array composed of objects with a "
                                           "single key and a string value")
        guc = Headers()
        for item in parsed:  # GUC headers replace PostgREST's; repeated names are joined
            (name, value), = item.items()
            guc.put(name, f"{guc[name]}, {value}" if name in guc else value)
        for name, value in guc.items():
            headers.put(name, value)
    if status == 503 and "Retry-After" not in headers:
        headers.put("Retry-After", RETRY_AFTER)
    return Response(status, headers, body)


def _request_headers(headers: Mapping[str, str] | None, cookies: Mapping[str, str] | None,
                     *, with_token: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``request.headers`` (lower-case names, no Cookie) and ``request.cookies`` (contract §1.1 step 2).

    No ``headers`` at all: a client behind the project's nginx, which sets ``x-real-ip`` to the peer
    address, each call from its own loopback address. Pass ``headers`` (``{}`` included) to send
    exactly those, as a caller that reached PostgREST past the proxy would."""
    if headers is None:
        n = random.getrandbits(24)
        headers = {"x-real-ip": f"127.{n >> 16}.{(n >> 8) & 255}.{n & 255 or 1}"}
    lowered = {k.lower(): v for k, v in headers.items()}
    if with_token:
        lowered.setdefault("authorization", "Bearer emulated")
    jar: dict[str, str] = {}
    for pair in lowered.pop("cookie", "").split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep:
            jar[name] = value
    jar.update(cookies or {})
    return lowered, jar


def _query_text(value: Any) -> str:
    """A query-string value as text; lists become array literals ``{a,b}`` (as postgrest-js sends them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_array_element(v) for v in value) + "}"
    if value is None or isinstance(value, dict):
        raise TypeError(f"cannot send {value!r} as a query-string argument")
    return str(value)


def _array_element(value: Any) -> str:
    text = _query_text(value)
    if text == "" or text.upper() == "NULL" or re.search(r'[{}",\\\s]', text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _escape_ident(name: str) -> str:
    """``escapeIdent``: double-quote an identifier (used for the search_path list)."""
    return '"' + name.replace("\x00", "").replace('"', '""') + '"'


def _json(value: Any) -> str:
    """Compact JSON like Aeson; values json cannot encode (UUID, datetime, ...) are sent as ``str(value)``."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
