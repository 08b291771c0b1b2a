-- Tally candidate: the ballot plus an append-only delta row, folded later in batches.
\set n random(1, :npolls)
begin;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       '00000000-0000-0000-0000-000000000000', array[b.option_id]
from bench.polls as b where b.n = :n;
insert into bench.tally_deltas (poll_id, position, delta) select b.poll_id, 1, 1 from bench.polls as b where b.n = :n;
end;
