-- router.forward_error(state, message, detail, hint): re-raise an error of a PL/Proxy call as the
-- client must see it. Always raises.
--
-- Errors    - an API error of the shard (SQLSTATE PGRST, internal.raise_api_error): as raised
--             there. PL/Proxy keeps the SQLSTATE but prefixes the message with
--             "<function>(<n>): [<database>] REMOTE ERROR: " and the detail with "Remote detail: ",
--             which would hide the JSON PostgREST reads the status and code from.
--           - a shard that cannot be reached or is going away (PL/Proxy's own XX000 naming the
--             libpq call that failed, "PL/Proxy function f(n): [db] PQconnectPoll: ...", class 08,
--             admin shutdown / crash / starting up 57P01-57P03 as REMOTE FATAL, class 53: too many
--             connections, out of memory or disk): shard_unavailable, 502 with Retry-After. Left alone, XX000 is a
--             500, and 08 / 53 / 57P01 are 503s after which PostgREST re-probes its own, healthy,
--             database. Not 503 either: PostgREST 12 adds "Retry-After: 0" to any 503, beside ours
--             (tests/test_shards.py holds the status and the single header).
--           - anything else: its SQLSTATE with the shard's own message, detail and hint.
create or replace function router.forward_error(state text, message text, detail text, hint text)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    remote_message text := coalesce(substring(message from 'REMOTE [A-Z]+: (.*)$'), message);
    remote_detail  text := coalesce(substring(detail from '^Remote detail: (.*)$'), detail);
    remote_hint    text := coalesce(substring(hint from '^Remote hint: (.*)$'), hint);
begin
    if state = 'PGRST' then
        raise sqlstate 'PGRST' using message = remote_message, detail = coalesce(remote_detail, '');
    end if;
    if state like '08%' or state like '53%' or state in ('57P01', '57P02', '57P03')
       or (state = 'XX000' and message ~ '^PL/Proxy function .*\] PQ[A-Za-z]+: ') then
        perform internal.raise_api_error('shard_unavailable',
            'The database shard that holds this poll is unavailable. Retry in 1 s.', '{"Retry-After": "1"}');
    end if;
    raise exception using errcode = state, message = remote_message, detail = coalesce(remote_detail, ''),
                          hint = coalesce(remote_hint, '');
end
$function$;
