-- api.create_poll: create a poll owned by the signed-in caller.  POST /rpc/create_poll
--
-- Inputs    question (1-500 characters, not blank); options (2-100 labels of 1-200
--           characters, not blank, unique); max_choices (1..number of options);
--           blank = only white space (spaces, tabs, line breaks, Unicode spaces).
--           options is a JSON array, or a string in PostgreSQL's array syntax that
--           PostgREST coerces into the same array; one with more dimensions or a lower
--           bound other than 1 ("[0:1]={a,b}") is invalid_poll.
--           allow_revote, allow_multiple_votes, allow_anonymous (true/false);
--           closes_at (optional, in the future).
-- Output    {"poll_id", "option_ids"} with option_ids in the order of `options`.
-- Errors    login_required 401 (JWT without a usable sub), invalid_poll 400.
--           Callers without a JWT cannot execute it (PostgREST answers 401).
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
    creator    bytea := internal.voter_key('sub:' || internal.jwt_sub());
    new_poll   uuid;
    option_ids uuid[];
    problem    text;
    -- White space only: ASCII white space and Unicode's space separators and line breaks
    -- (btrim alone strips only spaces, so a tab or a newline would pass).
    blank      constant text := '^[ \t\n\r\f\v\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$';
begin
    problem := case
        when question is null or char_length(question) not between 1 and 500 or question ~ blank
            then 'question must be 1-500 characters and not blank.'
        when options is null or array_ndims(options) <> 1 or array_lower(options, 1) <> 1
             or cardinality(options) not between 2 and 100
            then 'options must be a JSON array of 2-100 option labels.'
        when exists (select from unnest(options) as l
                     where l is null or char_length(l) not between 1 and 200 or l ~ blank)
            then 'Each option label must be 1-200 characters and not blank.'
        when (select count(distinct l) from unnest(options) as l) <> cardinality(options)
            then 'Option labels must be unique within a poll.'
        when max_choices is null or max_choices not between 1 and cardinality(options)
            then format('max_choices must be between 1 and the number of options (%s).', cardinality(options))
        when allow_revote is null or allow_multiple_votes is null or allow_anonymous is null
            then 'allow_revote, allow_multiple_votes and allow_anonymous must be true or false.'
        when closes_at <= now()
            then 'closes_at must be in the future.'
    end;
    if problem is not null then
        perform internal.raise_api_error('invalid_poll', problem);
    end if;

    -- The id: new, unless a sharded router chose it (shard.create_poll sets pgvote.new_poll_id for its
    -- transaction), because on a sharded stack the id decides the shard the poll lives on.
    insert into voting.polls (poll_id, creator_key, question, option_count, max_choices,
                              allow_revote, allow_multiple_votes, allow_anonymous, closes_at)
    values (coalesce(nullif(current_setting('pgvote.new_poll_id', true), '')::uuid, gen_random_uuid()),
            creator, question, cardinality(options), max_choices,
            allow_revote, allow_multiple_votes, allow_anonymous, closes_at)
    returning polls.poll_id into new_poll;

    with inserted as (
        insert into voting.poll_options (poll_id, position, label)
        select new_poll, l.position, l.label
        from unnest(options) with ordinality as l(label, position)
        returning poll_options.option_id, poll_options.position
    )
    select array_agg(i.option_id order by i.position) into option_ids from inserted as i;

    return jsonb_build_object('poll_id', new_poll, 'option_ids', to_jsonb(option_ids));
end
$function$;
