-- internal.normalize_ballot(poll_id, max_choices, option_ids): validate a ballot and
-- return it as a set in the poll's option order ([a,b] and [b,a] are the same ballot),
-- with the options' positions (what the tallies count by).
--
-- Errors: invalid_ballot (400) when the ballot is empty, not a flat list (more than one
-- dimension, or a lower bound other than 1: what an array-literal string such as
-- "[0:1]={a,b}" coerces to, and no JSON array does), holds a null or a duplicate, has more
-- than max_choices options, or names an option of another poll.
-- The cheap checks run before the lookup, so an oversized array costs nothing.
-- Like every internal.* function it has no SET search_path of its own: it runs inside an
-- api function, whose pinned search_path it inherits (a SET clause costs a GUC
-- save/restore on every call).
create or replace function internal.normalize_ballot(
    poll_id uuid,
    max_choices integer,
    option_ids uuid[],
    out ballot uuid[],
    out positions smallint[]
)
language plpgsql
stable
as $function$
begin
    if option_ids is null or cardinality(option_ids) = 0 then
        perform internal.raise_api_error('invalid_ballot', 'Choose at least one option.');
    end if;
    if array_ndims(option_ids) > 1 or array_lower(option_ids, 1) <> 1
       or array_position(option_ids, null) is not null then
        perform internal.raise_api_error('invalid_ballot',
            'option_ids must be a flat JSON array of option ids, without nulls.');
    end if;
    if cardinality(option_ids) > max_choices then
        perform internal.raise_api_error('invalid_ballot',
            format('This poll allows at most %s choice(s) per ballot; got %s.',
                   max_choices, cardinality(option_ids)));
    end if;
    if cardinality(option_ids) = 1 then  -- the common ballot: a plain key lookup
        select array[o.option_id], array[o.position] into ballot, positions
        from voting.poll_options as o
        where o.poll_id = normalize_ballot.poll_id and o.option_id = normalize_ballot.option_ids[1];
    else
        select array_agg(o.option_id order by o.position), array_agg(o.position order by o.position)
        into ballot, positions
        from voting.poll_options as o
        where o.poll_id = normalize_ballot.poll_id
          and o.option_id = any (normalize_ballot.option_ids);
    end if;

    -- Fewer options found than given: a duplicate, or an option of another poll. Told
    -- apart only on this error path, so a valid ballot costs one query.
    if coalesce(cardinality(ballot), 0) <> cardinality(option_ids) then
        if (select count(distinct o) from unnest(option_ids) as o) <> cardinality(option_ids) then
            perform internal.raise_api_error('invalid_ballot', 'Each option may appear only once in a ballot.');
        end if;
        perform internal.raise_api_error('invalid_ballot', 'At least one option_id is not an option of this poll.');
    end if;
end
$function$;
