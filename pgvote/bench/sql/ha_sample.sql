-- One sample of `pgvote bench --ha` (pgvote/bench/ha_bench.py), on the leader: the poll's total as the leader
-- has it, and how far the synchronous standby's replay is behind (ms, WAL bytes; null without a sync standby).
select (api.poll_results(%s::uuid) ->> 'total_ballots')::int, extract(epoch from r.replay_lag) * 1000,
       pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)
from (select) one left join pg_stat_replication r on r.sync_state = 'sync'
