-- internal.check_ballot_batch(ballots): the checks of a whole cast_votes batch, before any ballot.
--
-- Errors    invalid_ballot 400 when `ballots` is not a JSON array or holds more than 1,000
--           ballots. One function for api.cast_votes and for the router's cast_votes, which
--           must refuse a batch with the same words before splitting it over the shards.
create or replace function internal.check_ballot_batch(ballots jsonb) returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $function$
begin
    if jsonb_typeof(ballots) is distinct from 'array' then
        perform internal.raise_api_error('invalid_ballot', 'ballots must be a JSON array of ballot objects.');
    end if;
    if jsonb_array_length(ballots) > 1000 then
        perform internal.raise_api_error('invalid_ballot',
            format('A batch holds at most 1000 ballots; got %s.', jsonb_array_length(ballots)));
    end if;
end
$function$;
