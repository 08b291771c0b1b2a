-- internal.parse_uuid(text): the uuid, or NULL when the text is not one (instead of an
-- error), for validating many ballots in one statement. Accepts exactly what the uuid type
-- accepts (its input function, which PostgREST's json_to_record applies to cast_vote's
-- arguments): 32 hex digits, either case, a hyphen allowed after any group of four but
-- the last, the whole optionally in one pair of braces.
-- The usual spelling (8-4-4-4-12, the uuid type's own output) is recognised without the
-- regular expression: the regex costs ~15 us a call, and was half of a bulk batch's
-- instructions (docs/benchmarks.md, the budget); every other spelling takes the regex.
-- No SET clause, so the planner can inline it.
create or replace function internal.parse_uuid(value text) returns uuid
language sql
immutable
parallel safe
as $function$
    select case
               when length(value) = 36 and translate(value, '0123456789abcdefABCDEF', '') = '----'
                    and substr(value, 9, 1) = '-' and substr(value, 14, 1) = '-'
                    and substr(value, 19, 1) = '-' and substr(value, 24, 1) = '-'
                   then value::uuid
               when value ~ '^(\{[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7}\}|[0-9a-fA-F]{4}(-?[0-9a-fA-F]{4}){7})$'
                   then value::uuid
           end
$function$;
