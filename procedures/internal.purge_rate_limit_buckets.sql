-- internal.purge_rate_limit_buckets(): delete the token buckets that are full again; returns
-- how many were deleted.
--
-- A bucket untouched for burst / rate seconds has refilled completely, and a missing bucket
-- is created full: deleting it changes no caller's limit, it only keeps the table as small as
-- the set of recent callers. Scheduled every 5 minutes by pg_cron (db/schedules.sql); safe at
-- any time. Locks the rows it deletes; a concurrent request on one of them waits, then sees it
-- updated (kept: the predicate is re-checked on the new row) or deleted (recreated full, the
-- same state).
create or replace function internal.purge_rate_limit_buckets() returns integer
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $function$
declare
    purged integer;
begin
    delete from rate_limit.buckets as b
    using rate_limit.limits as l
    where l.name = b.limit_name
      and b.refilled_at < clock_timestamp() - make_interval(secs => l.burst / (l.requests_per_minute / 60.0));
    get diagnostics purged = row_count;
    return purged;
end
$function$;
