-- internal.parse_uuid(text): the uuid, or NULL when the text is not one (instead of an
-- error), for validating many ballots in one statement. Accepts exactly what the uuid type
-- accepts (its input function, which PostgREST's json_to_record applies to cast_vote's
-- arguments): 32 hex digits, either case, a hyphen allowed after any group of four but
-- the last, the whole optionally in one pair of braces. No SET clause, so the planner can
-- inline it.
create or replace function internal.parse_uuid(value text) returns uuid
language sql
immutable
parallel safe
as $function$
    select case when value ~ '^(\{[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7}\}|[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7})$'
                then value::uuid end
$function$;
