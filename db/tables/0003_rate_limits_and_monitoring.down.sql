-- Undo revision 0003. The role ops stays (roles are cluster-wide, see db/roles.sql), and so does
-- the pg_stat_statements extension (server-wide statistics other tools may read).
do $unschedule$
begin
    if to_regclass('cron.job') is not null then
        perform cron.unschedule(j.jobid) from cron.job as j where j.jobname = 'pgvote-purge-rate-limit-buckets';
    end if;
end
$unschedule$;

drop schema if exists hooks cascade;
drop schema if exists monitoring cascade;
drop schema if exists rate_limit cascade;
drop index if exists voting.ballots_cast_at_brin;

-- The functions of procedures/ that use the dropped tables; forget their digests so that the
-- next upgrade to head creates them again.
drop function if exists internal.take_rate_token(text, bytea);
drop function if exists internal.take_fingerprint_token(uuid, boolean, bytea);
drop function if exists internal.purge_rate_limit_buckets();
delete from internal.procedure_sources
where file in ('hooks.pre_request.sql', 'internal.take_rate_token.sql',
               'internal.take_fingerprint_token.sql', 'internal.purge_rate_limit_buckets.sql');
