-- The locks this session holds, read at the end of one call inside its (rolled back) transaction
-- (pgvote/bench/scenarios.py locks_held_by_one_call): its virtual xid and the pg_locks view itself left out.
select locktype, coalesce(relation::regclass::text, ''), mode from pg_locks
where pid = pg_backend_pid() and locktype <> 'virtualxid' and coalesce(relation::regclass::text, '') <> 'pg_locks'
order by 1, 2, 3
