-- internal.coerce_option_ids(value): a bulk ballot's option_ids as cast_vote would receive
-- it, for the shapes api.cast_votes' set-wise check does not read itself (anything but a
-- JSON array of scalars).
--
-- PostgREST hands cast_vote its JSON body through json_to_record, which coerces a string
-- in PostgreSQL's array syntax ("{a,b}", "[0:1]={a,b}") or nested JSON arrays into a uuid[].
-- This applies the same coercion and returns:
--   a flat JSON array of the elements (nulls kept) when the result has one dimension and
--     lower bound 1, or is empty;
--   the JSON string "not_flat" when it has more dimensions or another lower bound
--     (cast_vote answers invalid_ballot: not a flat list);
--   the JSON string "malformed" when the coercion fails: a data error, or a program limit
--     such as more than 6 dimensions (cast_vote is answered 400 or 413 by PostgREST before
--     it runs; the bulk path rejects that ballot as invalid_ballot).
-- The exception block costs a subtransaction, paid only by these rare shapes.
create or replace function internal.coerce_option_ids(value jsonb) returns jsonb
language plpgsql
immutable
as $function$
declare
    coerced uuid[];
begin
    select r.option_ids into coerced
    from jsonb_to_record(jsonb_build_object('option_ids', value)) as r(option_ids uuid[]);
    if array_ndims(coerced) > 1 or array_lower(coerced, 1) <> 1 then
        return '"not_flat"'::jsonb;
    end if;
    return to_jsonb(coerced);
exception when data_exception or program_limit_exceeded then
    return '"malformed"'::jsonb;
end
$function$;
