-- internal.ballot_delta(option_count, added, removed): the tally change of one ballot as
-- a vector over option positions 1..option_count: +1 where added, -1 where removed.
create or replace function internal.ballot_delta(
    option_count integer,
    added smallint[],
    removed smallint[] default '{}'
) returns bigint[]
language sql
immutable
parallel safe
as $function$
    select array_agg((p = any (added))::integer - (p = any (coalesce(removed, '{}')))::integer order by p)
    from generate_series(1, option_count) as p
$function$;
