-- The lock requests of the current database not granted right now, one sample of
-- pgvote/bench/scenarios.py LockWaitSampler: what kind of lock, on which relation, asked by which statement.
select l.locktype, coalesce(l.relation::regclass::text, ''), a.query
from pg_locks l join pg_stat_activity a on a.pid = l.pid
where not l.granted and a.datname = current_database()
