-- Tally candidate: the ballot plus a per-option counter row shared by every voter.
\set n random(1, :npolls)
begin;
insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
select b.poll_id, uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()),
       '00000000-0000-0000-0000-000000000000', array[b.option_id]
from bench.polls as b where b.n = :n;
update bench.shared_counters set votes = votes + 1 where n = :n and position = 1;
end;
