-- Undo revision 0005. The schema's routines go with it; forget their digests so that the next
-- upgrade to head creates them again.
drop schema if exists partman cascade;
delete from internal.procedure_sources where file like 'partman.%';
