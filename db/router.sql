-- The router database of the sharded profile (pgvote/shards.py): what its functions in
-- procedures/router/ need before they are created. Idempotent, applied on every sync of the router.
-- The cluster itself (one partition per shard) is written by pgvote/shards.py, from the ports.
create extension if not exists plproxy;

create schema if not exists router;
comment on schema router is
    'PL/Proxy calls to the shards and their helpers, used by the router''s api functions only. Not exposed.';

-- Nothing here is for API roles or PUBLIC: the api functions (SECURITY DEFINER) call these as
-- their owner. New functions start without PUBLIC's EXECUTE; existing ones lose it.
revoke all on schema router from public, anon, authenticated, ingest;
alter default privileges in schema router revoke execute on functions from public;
revoke all on all functions in schema router from public, anon, authenticated, ingest;
