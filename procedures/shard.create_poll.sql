-- shard.create_poll: api.create_poll on a shard, under the poll id the router chose.
--
-- Inputs    request: the router-derived request (see shard.cast_vote); poll_id: the
--           new poll's id, which the router hashed to pick this shard; then api.create_poll's
--           arguments.
-- Output    api.create_poll's answer, whose poll_id is the given one.
-- Errors    api.create_poll's (login_required, invalid_poll).
-- Why       the id decides where a poll lives (the router runs this on hashtext(poll_id)), so the
--           router picks it before the shard is known; api.create_poll takes it from the
--           transaction-local pgvote.new_poll_id. Executable only by pgvote_router.
create or replace function shard.create_poll(
    request jsonb,
    poll_id uuid,
    question text,
    options text[],
    max_choices integer,
    allow_revote boolean,
    allow_multiple_votes boolean,
    allow_anonymous boolean,
    closes_at timestamptz
) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
begin
    perform internal.adopt_request(request);
    perform set_config('pgvote.new_poll_id', poll_id::text, true);
    return api.create_poll(question, options, max_choices, allow_revote, allow_multiple_votes,
                           allow_anonymous, closes_at);
end
$function$;
