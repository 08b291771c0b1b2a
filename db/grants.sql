-- Who may do what: the whole truth, in one place. Re-applied after every upgrade, right
-- after procedures/ (same transaction), so it is idempotent: it first takes away every
-- privilege API roles could hold on our objects, then grants exactly these.
--
-- API roles (anon, authenticated, ingest) get USAGE on schema api and EXECUTE on api
-- functions only. No table privileges anywhere: every api function is SECURITY DEFINER
-- with a pinned search_path. Nothing of ours is executable by PUBLIC.

revoke all on schema api, voting, internal from public, anon, authenticated, ingest;
revoke all on all tables in schema voting, internal from public, anon, authenticated, ingest;
revoke all on all functions in schema api, internal from public, anon, authenticated, ingest;

grant usage on schema api to anon, authenticated, ingest;

grant execute on function api.cast_vote(uuid, uuid[], text, uuid)  to anon, authenticated;
grant execute on function api.poll_results(uuid)                   to anon, authenticated;
grant execute on function api.create_poll(text, text[], integer, boolean, boolean, boolean, timestamptz)
                                                                   to authenticated;
grant execute on function api.close_poll(uuid)                     to authenticated;
grant execute on function api.cast_votes(jsonb)                    to ingest;

-- Rate limiting and monitoring (revision 0003). PostgREST calls the db-pre-request hook as the
-- impersonated role, so every role a request can run as may use schema hooks and execute
-- hooks.pre_request() (SECURITY DEFINER: it reaches the private buckets). hooks is not in
-- db-schemas, so this is no /rpc endpoint. rate_limit is private like voting.
revoke all on schema hooks, rate_limit, monitoring from public, anon, authenticated, ingest;
revoke all on all tables in schema rate_limit, monitoring from public, anon, authenticated, ingest;
revoke all on all functions in schema hooks from public, anon, authenticated, ingest;

grant usage on schema hooks to anon, authenticated, ingest;

grant execute on function hooks.pre_request()                      to anon, authenticated, ingest;

-- Role ops (db/roles.sql) reads the monitoring views, and only them: the views read our tables
-- with their owner's rights, so ops needs no privilege on voting or rate_limit.
-- The shards' entry points: only the router's login (PL/Proxy) may call them, never an API role,
-- because they take the caller's identity as an argument.
revoke all on schema shard from public, anon, authenticated, ingest;
revoke all on all functions in schema shard from public, anon, authenticated, ingest;
grant usage on schema shard to pgvote_router;
grant execute on all functions in schema shard to pgvote_router;

-- The partition manager runs DDL with its caller's rights: the database owner (or a superuser)
-- only. ALL ROUTINES, because ALL FUNCTIONS leaves out procedures.
revoke all on schema partman from public, anon, authenticated, ingest, ops, pgvote_router;
revoke all on all routines in schema partman from public, anon, authenticated, ingest, ops, pgvote_router;

grant usage on schema monitoring to ops;
grant select on all tables in schema monitoring to ops;
-- ...and pg_stat_statements' function, which the latency views call as the reader: created after
-- 0001's "revoke execute from public" default, it is executable by its creator only.
do $pg_stat_statements$
declare
    fn regprocedure := to_regprocedure('pg_stat_statements(boolean)');
begin
    if fn is null then
        select format('%I.pg_stat_statements(boolean)', n.nspname)::regprocedure into fn
        from pg_catalog.pg_extension as e join pg_catalog.pg_namespace as n on n.oid = e.extnamespace
        where e.extname = 'pg_stat_statements';
    end if;
    if fn is not null then
        execute format('grant execute on function %s to ops', fn);
    end if;
end
$pg_stat_statements$;
