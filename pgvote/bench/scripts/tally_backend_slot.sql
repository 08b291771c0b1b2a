-- Tally candidate (the one pgvote uses): the ballot plus this backend's own tally slot.
\set n random(1, :npolls)
begin;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       '00000000-0000-0000-0000-000000000000', array[b.option_id]
from bench.polls as b where b.n = :n;
select internal.add_to_tally(b.poll_id, 1, '{1,0,0,0}') from bench.polls as b where b.n = :n;
end;
