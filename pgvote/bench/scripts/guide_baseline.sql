-- R3 baseline: the original guide's vote path, several round trips in one transaction:
-- fetch the poll, delete the voter's existing vote, insert the new one, bump the
-- option's counter row (the hot row every voter of the poll queues on).
\set n random(1, :npolls)
\set voter random(1, 1000000000)
begin;
select p.poll_id, p.option_id, p.allow_multiple_votes from bench.guide_polls as p where p.n = :n \gset
delete from bench.guide_votes where poll_id = :poll_id and voter = :client_id::bigint * 1000000000 + :voter;
insert into bench.guide_votes (poll_id, option_id, voter) values (:poll_id, :option_id, :client_id::bigint * 1000000000 + :voter);
update bench.guide_option_counts set votes = votes + 1 where option_id = :option_id;
end;
