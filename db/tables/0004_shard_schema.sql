-- Revision 0004: the schema of the shard-internal functions. FROZEN once merged: a change is a
-- new numbered file. Every database gets it (a single node never calls these functions); the
-- functions are procedures/shard.*.sql, and only the role PL/Proxy connects as (pgvote_router,
-- db/roles.sql) may execute them (db/grants.sql).
create schema shard;
comment on schema shard is
    'Entry points of a shard: what a PL/Proxy router calls with the identity it derived. Executable only by pgvote_router.';
