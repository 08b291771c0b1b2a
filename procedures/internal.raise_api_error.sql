-- internal.raise_api_error(code, message, headers): end the request with an API error.
--
-- Raises SQLSTATE 'PGRST' with the JSON MESSAGE/DETAIL pair PostgREST turns into an
-- HTTP response (docs/postgrest.md, "Errors"): the status comes from the code, the body is
-- {"code", "message", "details", "hint"}, `headers` are added to the response (e.g.
-- Retry-After). The raise aborts the transaction, so a rejected call writes nothing.
-- This CASE is the one place that maps a code to its status; api/README.md documents it.
create or replace function internal.raise_api_error(
    code text,
    message text,
    headers jsonb default '{}'
) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    http_status integer := case code
        when 'invalid_ballot'      then 400
        when 'invalid_fingerprint' then 400
        when 'invalid_poll'        then 400
        when 'login_required'      then 401
        when 'not_poll_creator'    then 403
        when 'poll_not_found'      then 404
        when 'already_voted'       then 409
        when 'poll_closed'         then 410
        when 'rate_limited'        then 429
        when 'shard_unavailable'   then 502
    end;
begin
    if http_status is null then
        raise exception 'internal.raise_api_error: unknown error code %', code;
    end if;
    raise sqlstate 'PGRST' using
        message = jsonb_build_object('code', code, 'message', message)::text,
        detail  = jsonb_build_object('status', http_status, 'headers', headers)::text;
end
$function$;
