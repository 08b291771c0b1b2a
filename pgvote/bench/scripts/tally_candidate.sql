-- The tally candidates: the ballot plus, by -D candidate=N, (1) a per-option counter row
-- shared by every voter (the original guide), (2) an append-only delta row folded later in
-- batches, (3) this backend's own tally slot (what pgvote uses).
\set n random(1, :npolls)
begin;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       '00000000-0000-0000-0000-000000000000', array[b.option_id]
from bench.polls as b where b.n = :n;
\if :candidate = 1
update bench.shared_counters set votes = votes + 1 where n = :n and position = 1;
\elif :candidate = 2
insert into bench.tally_deltas (poll_id, position, delta) select b.poll_id, 1, 1 from bench.polls as b where b.n = :n;
\else
select internal.add_to_tally(b.poll_id, 1, '{1,0,0,0}') from bench.polls as b where b.n = :n;
\endif
end;
