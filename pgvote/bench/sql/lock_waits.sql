-- The lock requests of the current database not granted right now, one sample of
-- pgvote/bench/scenarios.py lock_waits: what kind of lock, on which relation.
select l.locktype, coalesce(l.relation::regclass::text, '')
from pg_locks l join pg_stat_activity a on a.pid = l.pid
where not l.granted and a.datname = current_database()
