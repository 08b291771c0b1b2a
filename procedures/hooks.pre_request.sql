-- hooks.pre_request(): PostgREST's db-pre-request hook (api/postgrest.conf): the per-caller
-- rate limit of every request.
--
-- PostgREST runs `select "hooks"."pre_request"()` in the request's own transaction, after it
-- set the request.* settings and the role, before the API function (docs/postgrest.md).
-- It runs as the impersonated role, so the API roles have EXECUTE on it (db/grants.sql); it is
-- SECURITY DEFINER because the buckets are private. Schema hooks is not in db-schemas: this is
-- no /rpc endpoint.
--
-- Caller    the JWT "sub" (a string of 1-256 characters), else the client address in the
--           x-real-ip request header: IPv4 as is, IPv6 by its /64 (internal.client_network).
--           The header is trusted because of the deployment, not here: our nginx overwrites it
--           with the TCP peer address, and only the proxy reaches PostgREST (a NetworkPolicy in
--           deploy/k8s, PostgREST unpublished in deploy/compose.yaml; docs/operations.md). Never
--           x-forwarded-for: clients write it. A request with neither a sub nor an address
--           (PostgREST reached past the proxy, or a proxy that sets no x-real-ip) takes from ONE
--           bucket shared by all such requests: limited hard, never unlimited. Role ingest (the
--           trusted batching tier of the bulk path) is never limited here. Keys are stored as
--           HMACs (internal.voter_key), never in clear.
-- Limit     rate_limit.limits 'request' (default 10 per minute, burst 20): a token bucket,
--           see internal.take_rate_token.
-- Reads     GET and HEAD, and POST to a STABLE function, run READ ONLY: the hook returns at
--           once and writes nothing (a write would fail with 25006, answered 405). Reads are
--           not limited in the database: nginx's limit_req bounds them, and poll_results is
--           cacheable for a second.
-- Errors    rate_limited 429 with Retry-After (whole seconds).
-- Rollback  the token is taken in the request's transaction, so a request that fails (any
--           4xx, or the 429 raised here) gives it back: only successful requests count. Floods
--           of failing requests are bounded at the edge by nginx's limit_req, not here.
-- Locks     the caller's own bucket row until the request commits: concurrent requests of one
--           caller queue on each other; different callers never do.
create or replace function hooks.pre_request() returns void
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    claims   jsonb;
    sub      jsonb;
    identity text;
begin
    if current_setting('transaction_read_only')::boolean
       or coalesce(current_setting('request.method', true), '') in ('GET', 'HEAD', 'OPTIONS') then
        return;
    end if;

    claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    if claims ->> 'role' = 'ingest' then
        return;
    end if;
    sub := claims -> 'sub';
    if jsonb_typeof(sub) = 'string' and char_length(sub #>> '{}') between 1 and 256 then
        identity := 'sub:' || (sub #>> '{}');
    else
        -- 'ip:none' is no address's key: the shared bucket of requests without one
        identity := 'ip:' || coalesce(internal.client_network(
            nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-real-ip'), 'none');
    end if;

    perform internal.take_rate_token('request', internal.voter_key(identity));
end
$function$;
