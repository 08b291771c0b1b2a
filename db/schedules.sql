-- Jobs PostgreSQL runs by itself, through pg_cron. Re-applied after every upgrade, after
-- the procedures (idempotent: cron.schedule with a job name replaces that job).
--
-- pg_cron is optional: it must be preloaded and this must be the database named by
-- cron.database_name. Without it nothing is wrong, only slower over time: tally slots
-- of exited backends are not merged, so run `select internal.compact_tally_slots()`
-- from any scheduler you have (every minute is plenty).
-- Likewise `select internal.purge_rate_limit_buckets()` every few minutes (rate-limit buckets).
do $schedules$
begin
    if current_setting('cron.database_name', true) is distinct from current_database()
       or not exists (select from pg_catalog.pg_available_extensions where name = 'pg_cron') then
        raise notice 'pg_cron is not available in database %: schedule internal.compact_tally_slots() yourself',
            current_database();
        return;
    end if;
    create extension if not exists pg_cron;
    perform cron.schedule('pgvote-compact-tally-slots', '* * * * *',
                          'select internal.compact_tally_slots()');
    -- Full token buckets are the same as missing ones: drop them so the UNLOGGED table stays as
    -- small as the set of recent callers (revision 0003).
    perform cron.schedule('pgvote-purge-rate-limit-buckets', '*/5 * * * *',
                          'select internal.purge_rate_limit_buckets()');
end
$schedules$;
