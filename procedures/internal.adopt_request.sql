-- internal.adopt_request(request): on a shard, take on the request a PL/Proxy router passed along
-- (router.request_context in procedures/router/), for the current transaction only.
--
-- Inputs    {"claims": {"role", "sub"}, "method", "read_only"}.
-- Sets      request.jwt.claims and request.method as PostgREST sets them on a single node, and
--           READ ONLY when the router's transaction is (going read-only is allowed at any point;
--           a write then fails with 25006, PostgREST's 405, as on a single node). Everything is
--           transaction-local (set_config(..., true)): nothing stays on PL/Proxy's connection.
-- Called by the shard.* entry points, which only the router's login may execute.
create or replace function internal.adopt_request(request jsonb) returns void
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $function$
begin
    perform set_config('request.jwt.claims', coalesce(request -> 'claims', '{}')::text, true);
    perform set_config('request.method', coalesce(request ->> 'method', ''), true);
    if coalesce((request ->> 'read_only')::boolean, false) then
        perform set_config('transaction_read_only', 'on', true);
    end if;
end
$function$;
