-- internal.parse_uuid(text): the uuid, or NULL when the text is not one (instead of an
-- error), for validating many ballots in one statement. Accepts the canonical form, with
-- or without hyphens and braces. No SET clause, so the planner can inline it.
create or replace function internal.parse_uuid(value text) returns uuid
language sql
immutable
parallel safe
as $function$
    select case when value ~* '^\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?$'
                then value::uuid end
$function$;
