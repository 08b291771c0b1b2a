-- internal.compact_tally_slots(): merge the tally slots of backends that have exited
-- into slot 0 of their poll; returns the number of slots merged.
--
-- Keeps poll_results' read bounded by the live backends (+1) per poll. Scheduled every
-- minute by pg_cron (db/schedules.sql); safe to run at any time and concurrently with
-- votes: it touches only rows of backends that no longer run, and it moves counts
-- within one transaction, so every sum is conserved. A pid reused by a new backend in
-- the meantime at worst makes that backend start a fresh row. One at a time with
-- rebuild_tallies, which re-creates slot 0: both take the tally_maintenance lock
-- (internal.advisory_lock_namespace) for their transaction.
create or replace function internal.compact_tally_slots() returns integer
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    merged integer;
begin
    perform pg_advisory_xact_lock(internal.advisory_lock_namespace('tally_maintenance'), 0);
    with live as materialized (  -- read the backend list once, not once per slot row
        select a.pid from pg_stat_activity as a where a.pid is not null
    ),
    retired as (
        delete from voting.tally_slots as t
        where t.slot <> 0
          and t.slot not in (select live.pid from live)
        returning t.poll_id, t.ballots, t.votes
    ),
    per_position as (
        select r.poll_id, v.position, sum(v.votes) as votes
        from retired as r, unnest(r.votes) with ordinality as v(votes, position)
        group by r.poll_id, v.position
    ),
    per_poll as (
        select r.poll_id, sum(r.ballots) as ballots, count(*) as slots,
               (select array_agg(p.votes order by p.position)
                from per_position as p where p.poll_id = r.poll_id) as votes
        from retired as r
        group by r.poll_id
    ),
    upserted as (
        insert into voting.tally_slots as t (poll_id, slot, ballots, votes)
        select pp.poll_id, 0, pp.ballots, pp.votes from per_poll as pp
        on conflict on constraint tally_slots_pkey do update
        set ballots = t.ballots + excluded.ballots,
            votes = internal.add_vectors(t.votes, excluded.votes)
    )
    select coalesce(sum(pp.slots), 0) into merged from per_poll as pp;
    return merged;
end
$function$;
