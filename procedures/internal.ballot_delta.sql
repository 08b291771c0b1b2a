-- internal.ballot_delta(option_count, added, removed): the tally change of one ballot as
-- a vector over option positions 1..option_count: +1 where added, -1 where removed.
-- A PL/pgSQL loop of simple expressions: no query to plan on the vote path.
create or replace function internal.ballot_delta(
    option_count integer,
    added smallint[],
    removed smallint[] default '{}'
) returns bigint[]
language plpgsql
immutable
parallel safe
as $function$
declare
    delta bigint[] := array_fill(0::bigint, array[option_count]);
    p smallint;
begin
    foreach p in array coalesce(added, '{}'::smallint[]) loop
        delta[p] := delta[p] + 1;
    end loop;
    foreach p in array coalesce(removed, '{}'::smallint[]) loop
        delta[p] := delta[p] - 1;
    end loop;
    return delta;
end
$function$;
