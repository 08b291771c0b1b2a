-- One batch of a split's copy (partitions/splitsql.py fills in the names): the next rows of the source by
-- primary key (after the last key of the previous batch), each into the target its row hashes to;
-- returns how many it read and the last key.
with batch as materialized (
    select {cols} from {source} {after} order by {pk} limit {n}
), low as (
    insert into {low} ({cols}) select {cols} from batch where {fits} on conflict do nothing
), high as (
    insert into {high} ({cols}) select {cols} from batch where not {fits} on conflict do nothing
)
select (select count(*) from batch), {pk} from batch order by {pk_desc} limit 1
