-- Cluster-wide roles, PostgREST style. Roles outlive any one database, so they are
-- created when missing and never dropped (a downgrade leaves them in place).
--
--   authenticator  the only login role: PostgREST and PgBouncer connect as it, then
--                  switch per request to one of the roles below (NOINHERIT: it holds
--                  no privilege of its own until it switches).
--   anon           requests without a JWT.
--   authenticated  requests with a JWT whose role claim is "authenticated"; the voter
--                  is the JWT "sub" claim.
--   ingest         a trusted edge tier that batches ballots (JWT role "ingest").
--   ops            operators and monitoring (NOLOGIN): reads the monitoring schema, and the
--                  server statistics through pg_monitor. Grant it to a login of your
--                  monitoring tier (postgres_exporter, `pgvote stats`); never to API roles.
--   pgvote_router  the login a PL/Proxy router connects to the shards as (pgvote/shards.py): it may
--                  execute the shard.* entry points and nothing else.
do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit nocreatedb nocreaterole nosuperuser;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
        create role anon nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
        create role authenticated nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'ingest') then
        create role ingest nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'ops') then
        create role ops nologin;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'pgvote_router') then
        create role pgvote_router login noinherit nocreatedb nocreaterole nosuperuser;
    end if;
end
$roles$;

grant anon, authenticated, ingest to authenticator;
grant pg_monitor to ops;
