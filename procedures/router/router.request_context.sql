-- router.request_context(): what the shard that runs this request must know of it.
--
-- Output    {"claims": {"role", "sub"} of the claims PostgREST verified for this transaction
--           (request.jwt.claims; {} without a JWT), "method": the HTTP method (request.method),
--           "read_only": whether PostgREST runs this request READ ONLY (GET, HEAD, a STABLE
--           function)}. internal.adopt_request sets the same on the shard.
-- Why       PL/Proxy reaches a shard over its own connection and in its own transaction, where
--           PostgREST's transaction-local settings do not exist: the identity (claims), whether
--           the call came over HTTP (request.method: the per-fingerprint limit applies to HTTP
--           callers only) and the read-only mode of a GET must cross with the call, or a GET of
--           cast_vote would vote. Nothing else crosses: other claims and the request headers
--           decide nothing on a shard (the per-caller rate limit is this database's hook).
--           PL/pgSQL: one expression, planned once per session (a SQL function with a FROM
--           clause would be planned on every vote).
create or replace function router.request_context() returns jsonb
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $function$
declare
    claims jsonb := coalesce(nullif(current_setting('request.jwt.claims', true), '')::jsonb, '{}');
begin
    return jsonb_build_object(
        'claims', jsonb_strip_nulls(jsonb_build_object('role', claims -> 'role', 'sub', claims -> 'sub')),
        'method', current_setting('request.method', true),
        'read_only', current_setting('transaction_read_only')::boolean);
end
$function$;
