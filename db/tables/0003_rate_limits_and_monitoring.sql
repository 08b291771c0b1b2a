-- Revision 0003: rate-limit state and the monitoring schema. FROZEN once merged: a change is a
-- new numbered file. The functions that use these tables live in procedures/ (hooks.pre_request,
-- internal.take_rate_token, internal.take_fingerprint_token, internal.purge_rate_limit_buckets);
-- who may use what is in db/grants.sql; the purge job is in db/schedules.sql.
--
-- Views are defined here, not in procedures/: procedures/ holds functions only, and the views
-- are created before the procedures of an upgrade exist. A view change is a new revision
-- (CREATE OR REPLACE VIEW), like a table change.

create schema hooks;
comment on schema hooks is
    'PostgREST''s db-pre-request hook. NOT exposed (not in db-schemas): API roles may only execute hooks.pre_request().';

create schema rate_limit;
comment on schema rate_limit is
    'Private rate-limit configuration and token buckets. No API role has any privilege here.';

create schema monitoring;
comment on schema monitoring is
    'Read-only health views for operators and Prometheus: readable by role ops, never by API roles.';

-- ---- rate limiting -----------------------------------------------------------------------------

-- One row per limit. 'request': per caller, in hooks.pre_request (JWT sub, else the proxy-set
-- client IP). 'fingerprint': per (poll, anonymous voter) on multiple-vote polls, inside
-- cast_vote (internal.take_fingerprint_token). A token bucket: `burst` requests at once, then
-- `requests_per_minute` on average. Defaults are the guide's nginx zone (10 r/min, burst 20).
-- Edit a row to change a limit; it applies to the next request (no reload).
create table rate_limit.limits (
    name                text primary key check (name in ('request', 'fingerprint')),
    requests_per_minute double precision not null check (requests_per_minute > 0 and requests_per_minute <= 1e6),
    burst               integer not null check (burst between 1 and 1000000),
    enabled             boolean not null default true,
    updated_at          timestamptz not null default now()
);
comment on table rate_limit.limits is
    'Token-bucket limits: burst requests at once, refilled at requests_per_minute. enabled = false turns a limit off.';

insert into rate_limit.limits (name, requests_per_minute, burst) values
    ('request', 10, 20),
    ('fingerprint', 10, 20);

-- Bucket state. UNLOGGED: writing it costs no WAL on the vote path, and losing it (a crash
-- truncates unlogged tables) only refills every bucket, i.e. forgives recent callers: a
-- rate-limit reset, never a lost or double-counted vote. Unlogged tables are not replicated:
-- the hook writes them on the primary only (GETs, which may go to replicas, never touch them).
-- bucket_key is an HMAC (internal.voter_key) of the caller's identity: no sub, IP or fingerprint
-- is stored in clear. No foreign key to limits: its check would share-lock one limits row per
-- request (a hot row). Full buckets are deleted by internal.purge_rate_limit_buckets() (pg_cron);
-- a missing bucket and a full one mean the same.
create unlogged table rate_limit.buckets (
    limit_name  text not null,
    bucket_key  bytea not null,
    tokens      double precision not null,
    refilled_at timestamptz not null,
    primary key (limit_name, bucket_key)
) with (fillfactor = 70);  -- updated in place by every request of its caller: room for HOT updates
comment on table rate_limit.buckets is
    'Token buckets (UNLOGGED: a crash only refills them). tokens as of refilled_at; purged once full again.';

-- ---- monitoring --------------------------------------------------------------------------------

-- Bounded "votes in the last N seconds": a BRIN index on cast_at. Ballots are appended, so heap
-- order follows cast_at and the index narrows the scan to the last block ranges of each
-- partition (and the not-yet-summarized tail). Cheap on the vote path: inserting into an
-- unsummarized range touches no index page, unlike a btree on an increasing timestamp, whose
-- right-most leaf every voter would contend for. autosummarize lets autovacuum summarize
-- ranges as they fill.
create index ballots_cast_at_brin on voting.ballots using brin (cast_at)
    with (pages_per_range = 16, autosummarize = on);

-- Votes per second over the last 10 seconds (ballots recorded, from cast_at through the BRIN
-- index above), plus the cumulative insert/update counters of the ballots partitions
-- (pg_stat_user_tables) for Prometheus' rate(). A revote updates its row (changed_at): it shows
-- in ballots_updated_total, not in the window (an index on changed_at would cost every revote).
-- The counters include rolled-back attempts and may lag by up to ~10 s (a backend that goes idle
-- flushes its statistics at most once a second, else after 10 s).
create view monitoring.vote_rate as
with recent as (
    select count(*) as ballots
    from voting.ballots as b
    where b.cast_at >= now() - interval '10 seconds'
),
counters as (
    select coalesce(sum(s.n_tup_ins), 0)::bigint as inserted,
           coalesce(sum(s.n_tup_upd), 0)::bigint as updated
    from pg_catalog.pg_partition_tree('voting.ballots') as p
    join pg_catalog.pg_stat_user_tables as s on s.relid = p.relid
    where p.isleaf
)
select 10 as window_seconds,
       recent.ballots as ballots_in_window,
       round(recent.ballots / 10.0, 1) as votes_per_second,
       counters.inserted as ballots_inserted_total,
       counters.updated as ballots_updated_total,
       now() as sampled_at
from recent, counters;
comment on view monitoring.vote_rate is
    'Ballots recorded in the last 10 s (and per second); cumulative ballot inserts/updates for rate().';

-- Commits and rollbacks of this database since the statistics were last cleared. A rejected
-- API call (any 4xx, 429 included) rolls back, so rollbacks count failed calls; the per-code
-- split comes from the HTTP tier (nginx access log, deploy/prometheus/). Use rate() on the
-- counters for a recent window; rollback_ratio is over the whole period.
create view monitoring.rollback_rate as
select d.xact_commit,
       d.xact_rollback,
       round(d.xact_rollback::numeric / nullif(d.xact_commit + d.xact_rollback, 0), 4) as rollback_ratio,
       d.stats_reset
from pg_catalog.pg_stat_database as d
where d.datname = current_database();
comment on view monitoring.rollback_rate is
    'Commits, rollbacks (failed calls roll back) and their ratio since stats_reset; rate() them for a window.';

-- Client connections of the whole server (max_connections is server-wide): by state, waiting
-- for a heavyweight lock (row, advisory close fence, table), and the usage ratio against the
-- slots non-superusers can take. Full detail needs pg_read_all_stats (ops has pg_monitor).
create view monitoring.connections as
with c as (
    select a.state, a.wait_event_type, a.xact_start
    from pg_catalog.pg_stat_activity as a
    where a.backend_type = 'client backend'
)
select count(*) as connections,
       count(*) filter (where c.state = 'active') as active,
       count(*) filter (where c.state = 'idle') as idle,
       count(*) filter (where c.state in ('idle in transaction', 'idle in transaction (aborted)')) as idle_in_transaction,
       count(*) filter (where c.state = 'active' and c.wait_event_type = 'Lock') as waiting,
       current_setting('max_connections')::integer as max_connections,
       current_setting('superuser_reserved_connections')::integer as reserved_connections,
       round(count(*)::numeric / greatest(current_setting('max_connections')::integer
                                          - current_setting('superuser_reserved_connections')::integer, 1), 4)
           as usage_ratio,
       coalesce(round(extract(epoch from max(now() - c.xact_start))::numeric, 3), 0) as longest_transaction_seconds
from c;
comment on view monitoring.connections is
    'Client connections: total, active, idle, idle in transaction, waiting on a lock, usage of max_connections.';

-- Pending aggregation: tally slots of backends that have exited (slot <> 0, pid gone), which
-- internal.compact_tally_slots() merges into slot 0 every minute. Each one is an extra row
-- poll_results sums until then; a growing number means the compaction job is not running.
create view monitoring.aggregation_backlog as
select count(*) filter (where t.slot <> 0 and not exists (
           select from pg_catalog.pg_stat_activity as a where a.pid = t.slot)) as pending_slots,
       count(distinct t.poll_id) filter (where t.slot <> 0 and not exists (
           select from pg_catalog.pg_stat_activity as a where a.pid = t.slot)) as polls_pending,
       count(*) filter (where t.slot <> 0) as backend_slots,
       count(*) as slot_rows
from voting.tally_slots as t;
comment on view monitoring.aggregation_backlog is
    'Tally slots of exited backends awaiting compaction (pending_slots), and slot rows in total.';

-- Shared-buffer hit ratio of this database since stats_reset (rate() the counters for a window).
create view monitoring.cache_hit_ratio as
select d.blks_hit,
       d.blks_read,
       round(d.blks_hit::numeric / nullif(d.blks_hit + d.blks_read, 0), 4) as cache_hit_ratio
from pg_catalog.pg_stat_database as d
where d.datname = current_database();
comment on view monitoring.cache_hit_ratio is 'Buffer cache hits / (hits + reads) of this database.';

-- Rate limiter state: per limit, its settings, live buckets and buckets that are empty now
-- (callers being answered 429).
create view monitoring.rate_limits as
select l.name as limit_name,
       l.requests_per_minute,
       l.burst,
       l.enabled,
       count(b.bucket_key) as buckets,
       count(b.bucket_key) filter (
           where b.tokens + l.requests_per_minute / 60.0
                 * extract(epoch from now() - b.refilled_at)::double precision < 1) as exhausted_buckets
from rate_limit.limits as l
left join rate_limit.buckets as b on b.limit_name = l.name
group by l.name, l.requests_per_minute, l.burst, l.enabled;
comment on view monitoring.rate_limits is 'Each limit, its live buckets and the empty ones (callers answered 429 now).';

-- Statement latency from pg_stat_statements (preloaded by db/postgresql.conf). Created here
-- when the extension is available and this role may create it; otherwise the two views exist
-- with the same columns and no rows, so dashboards and exporters keep working. Latency here is
-- execution time only (a commit's WAL flush is not a tracked statement): end-to-end p95 comes
-- from the HTTP tier.
do $statements$
declare
    pgss_schema name;
begin
    if exists (select from pg_catalog.pg_available_extensions where name = 'pg_stat_statements') then
        begin
            create extension if not exists pg_stat_statements;
        exception when insufficient_privilege then
            raise notice 'pg_stat_statements not created (needs a superuser): monitoring latency views stay empty';
        end;
    end if;
    select n.nspname into pgss_schema
    from pg_catalog.pg_extension as e join pg_catalog.pg_namespace as n on n.oid = e.extnamespace
    where e.extname = 'pg_stat_statements';

    if pgss_schema is null then
        create view monitoring.api_latency as
        select null::text as function_name, 0::bigint as calls, 0::double precision as total_exec_ms,
               0::double precision as mean_exec_ms, 0::double precision as max_exec_ms, 0::bigint as rows
        where false;
        create view monitoring.statement_latency as
        select null::bigint as queryid, null::text as query, 0::bigint as calls, 0::double precision as total_exec_ms,
               0::double precision as mean_exec_ms, 0::double precision as stddev_exec_ms,
               0::double precision as max_exec_ms, 0::bigint as rows
        where false;
    else
        -- Per API function: top-level statements that call api.<function> (PostgREST's main
        -- query, or a direct call), summed over their normalised texts.
        execute format($view$
            create view monitoring.api_latency as
            select f.function_name,
                   sum(s.calls)::bigint as calls,
                   sum(s.total_exec_time) as total_exec_ms,
                   sum(s.total_exec_time) / nullif(sum(s.calls), 0) as mean_exec_ms,
                   max(s.max_exec_time) as max_exec_ms,
                   sum(s.rows)::bigint as rows
            from %I.pg_stat_statements as s,
                 lateral (select (regexp_match(s.query, '"?api"?\."?([a-z_][a-z0-9_]*)"?\s*\('))[1] as function_name) as f
            where s.dbid = (select d.oid from pg_catalog.pg_database as d where d.datname = current_database())
              and s.toplevel
              and f.function_name is not null
            group by f.function_name
        $view$, pgss_schema);
        -- The 20 statements of this database that took the most execution time in total.
        execute format($view$
            create view monitoring.statement_latency as
            select s.queryid,
                   left(regexp_replace(s.query, '\s+', ' ', 'g'), 300) as query,
                   s.calls,
                   s.total_exec_time as total_exec_ms,
                   s.mean_exec_time as mean_exec_ms,
                   s.stddev_exec_time as stddev_exec_ms,
                   s.max_exec_time as max_exec_ms,
                   s.rows
            from %I.pg_stat_statements as s
            where s.dbid = (select d.oid from pg_catalog.pg_database as d where d.datname = current_database())
            order by s.total_exec_time desc
            limit 20
        $view$, pgss_schema);
    end if;
end
$statements$;
comment on view monitoring.api_latency is
    'Execution time per api function (pg_stat_statements, top-level calls): calls, total/mean/max ms.';
comment on view monitoring.statement_latency is
    'The 20 statements with the most total execution time (pg_stat_statements).';
