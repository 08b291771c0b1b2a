-- The router database of the sharded profile (pgvote/shards.py): what its functions in
-- procedures/router/ need before they are created. Idempotent, applied on every sync of the router.
-- The cluster itself (one partition per shard) is written by pgvote/shards.py, from the ports.
-- PL/Proxy where it is installed; a Citus coordinator (deploy/citus/) runs this file without it.
do $plproxy$
begin
    if exists (select from pg_catalog.pg_available_extensions where name = 'plproxy') then
        create extension if not exists plproxy;
    end if;
end
$plproxy$;

create schema if not exists router;
comment on schema router is
    'PL/Proxy calls to the shards and their helpers, used by the router''s api functions only. Not exposed.';

-- Nothing here is for API roles or PUBLIC: the api functions (SECURITY DEFINER) call these as
-- their owner. New functions start without PUBLIC's EXECUTE; existing ones lose it.
revoke all on schema router from public, anon, authenticated, ingest;
alter default privileges in schema router revoke execute on functions from public;
revoke all on all functions in schema router from public, anon, authenticated, ingest;

-- A growth from N to 2N shards (pgvote/grow.py, docs/scaling.md): whether one runs and how many
-- partitions the cluster had before it (router.poll_hashes keeps polls not yet moved there), and the
-- polls already moved to their partition among 2N (and polls created meanwhile). router.moved is empty
-- outside a growth.
create table if not exists router.growth (
    singleton  boolean primary key default true check (singleton),
    active     boolean not null,
    partitions integer not null check (partitions >= 1)
);
insert into router.growth (active, partitions) values (false, 1) on conflict do nothing;
create table if not exists router.moved (poll_id uuid primary key);
revoke all on all tables in schema router from public, anon, authenticated, ingest;
