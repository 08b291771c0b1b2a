drop table if exists voting.tally_slots;
do $unschedule$
begin
    if to_regclass('cron.job') is not null then
        perform cron.unschedule(j.jobid) from cron.job as j where j.jobname = 'pgvote-compact-tally-slots';
    end if;
end
$unschedule$;
