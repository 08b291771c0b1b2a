-- api.create_poll on the router: a new poll on the shard its new id hashes to.
--           POST /rpc/create_poll
--
-- Inputs    as procedures/api.create_poll.sql (the same signature: the same HTTP contract).
-- Output    the shard's answer; its poll_id is the one chosen here.
-- Errors    the single node's (login_required, invalid_poll), shard_unavailable
--           (router.forward_error).
-- Placement the id decides (router.poll_shard): a random uuid, so polls spread evenly and no table
--           records where a poll lives. A new poll whose shard is down answers shard_unavailable,
--           as its votes would (a retry draws another id, most likely of another shard).
create or replace function api.create_poll(
    question text,
    options text[],
    max_choices integer default 1,
    allow_revote boolean default true,
    allow_multiple_votes boolean default false,
    allow_anonymous boolean default true,
    closes_at timestamptz default null
) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    new_poll uuid := gen_random_uuid();
    state text; message text; detail text; hint text;
begin
    -- During a growth a new poll goes straight to the grown cluster (its final shard), recorded as moved
    -- in this transaction: if the shard refuses the poll, the record goes with the rollback.
    if (select g.active from router.growth as g) then
        insert into router.moved (poll_id) values (new_poll);
    end if;
    return router.create_poll(router.request_context(), new_poll, question, options, max_choices, allow_revote,
                              allow_multiple_votes, allow_anonymous, closes_at);
exception when others then
    get stacked diagnostics state = returned_sqlstate, message = message_text, detail = pg_exception_detail,
                            hint = pg_exception_hint;
    perform router.forward_error(state, message, detail, hint);
    return null;  -- not reached: forward_error always raises
end
$function$;
