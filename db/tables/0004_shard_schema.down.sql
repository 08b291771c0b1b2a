-- Undo revision 0004. The role pgvote_router stays (roles are cluster-wide, see db/roles.sql).
-- The schema's functions go with it; forget their digests so that the next upgrade to head
-- creates them again.
drop schema if exists shard cascade;
delete from internal.procedure_sources where file like 'shard.%';
