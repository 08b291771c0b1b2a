-- api.cast_votes: record a batch of ballots for a trusted edge tier.  POST /rpc/cast_votes
--
-- Inputs    ballots: a JSON array of at most 1,000 objects {"poll_id", "option_ids",
--           "voter_id"} (an identity the edge tier authenticated: the same voter as a
--           JWT sub) or {"poll_id", "option_ids", "voter_fingerprint"} (anonymous), each
--           with an optional "ballot_id" (retry key on multiple-vote polls).
-- Output    {"recorded", "changed", "unchanged", "rejected": counts, "results": one per
--           input ballot, in input order: {"status": recorded|changed|unchanged,
--           "poll_id", "option_ids"} or {"status": "rejected", "code", "message"}}.
--           Each ballot gets the outcome and the code cast_vote would give it, in the
--           same precedence, for every value cast_vote accepts: each field is read as
--           PostgREST's json_to_record reads cast_vote's (any uuid spelling the uuid type
--           takes, option_ids as a JSON array or an array-literal string, a fingerprint
--           that is a JSON number counted as its text). What PostgREST would refuse before
--           cast_vote runs (a malformed uuid, an unknown key, a missing poll_id) rejects
--           that ballot only, as invalid_ballot, ahead of every other code. The ballots of
--           one voter in one poll apply in input order (a later one meets the earlier).
-- Errors    invalid_ballot 400 for the whole call (nothing written) when `ballots` is not
--           an array or holds more than 1,000 ballots. Any server error aborts the whole
--           batch: never a partial batch.
-- Speed     the batch is validated and inserted set-wise: one statement checks every
--           ballot (the set-based twin of cast_vote's checks; a test holds the two to the
--           same codes) and inserts all first-time ballots with one INSERT .. ON
--           CONFLICT; the tallies get one update per poll. Only ballots already stored
--           (retries, revotes) or repeated within the batch take the per-ballot path,
--           internal.record_ballot, in key order (see Locks).
-- Locks     the close fence (internal.poll_fence_lock_key) in SHARE mode of the polls of
--           the batch that exist, in poll order: unknown poll ids take no lock, so a batch
--           holds at most one lock per real poll. A poll created after the fences were
--           taken is poll_not_found for this batch (as if the batch came first). Closing
--           is judged by the clock once the fences are held. Then, as cast_vote: own
--           ballot rows and this backend's tally slots, in an order that does not depend
--           on the input order (poll, voter key, ballot key), so two batches holding the
--           same voters in opposite orders cannot deadlock; outcomes stay in input order.
create or replace function api.cast_votes(ballots jsonb) returns jsonb
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $function$
declare
    results  jsonb;  -- one element per input ballot, in input order
    pending  jsonb;  -- the ballots left to the per-ballot path, in key order (see Locks)
    tallies  jsonb;  -- per poll: counts of the ballots the set insert recorded
    outcomes jsonb := '{}'::jsonb;  -- input ordinal -> final element, for the per-ballot path
    counts   jsonb;  -- recorded / changed / unchanged / rejected
    tally    jsonb;
    item     jsonb;
    poll     voting.polls;
    recorded record;
    fenced     uuid[];       -- the existing polls of the batch, whose fences this holds
    checked_at timestamptz;  -- the clock once the fences are held: closes_at is judged by it
begin
    perform internal.check_ballot_batch(ballots);

    select coalesce(array_agg(p.poll_id order by p.poll_id), '{}') into fenced
    from voting.polls as p
    where p.poll_id in (select internal.parse_uuid(b ->> 'poll_id') from jsonb_array_elements(ballots) as b);
    perform pg_advisory_xact_lock_shared(internal.advisory_lock_namespace('poll_fence'),
                                         internal.poll_fence_lock_key(f.poll_id))
    from unnest(fenced) with ordinality as f(poll_id, n)
    order by f.n;
    checked_at := clock_timestamp();

    with input as (
        select i.ord::integer as ord, i.item,
               internal.parse_uuid(i.item ->> 'poll_id') as poll_id,
               internal.parse_uuid(i.item ->> 'ballot_id') as ballot_id,
               case
                   when coalesce(jsonb_typeof(i.item -> 'option_ids'), 'null') = 'null'
                       then null
                   when jsonb_typeof(i.item -> 'option_ids') = 'array'
                        and not jsonb_path_exists(i.item -> 'option_ids',
                                                  'strict $[*] ? (@.type() == "array" || @.type() == "object")')
                       then i.item -> 'option_ids'
                   else internal.coerce_option_ids(i.item -> 'option_ids')  -- strings, nested arrays, ...
               end as options,
               i.item -> 'voter_id' as voter_id,
               i.item ->> 'voter_fingerprint' as fingerprint  -- any JSON value, as its text
        from jsonb_array_elements(ballots) with ordinality as i(item, ord)
    ),
    elements as (
        -- Every listed option of every ballot, parsed once; options of non-arrays are none.
        select input.ord, input.poll_id, e.value as element, internal.parse_uuid(e.value #>> '{}') as option_id
        from input, jsonb_array_elements(input.options) as e
        where jsonb_typeof(input.options) = 'array'
    ),
    chosen as (
        -- One join of all listed options against the polls' options, aggregated per ballot
        -- (an index probe per ballot would cost more than the whole join).
        select el.ord, count(*) as n, count(distinct el.option_id) as n_distinct,
               bool_or(jsonb_typeof(el.element) = 'null') as has_null,
               bool_or(jsonb_typeof(el.element) <> 'null' and el.option_id is null) as has_malformed,
               count(o.option_id) as n_found,
               array_agg(o.option_id order by o.position) filter (where o.option_id is not null) as ballot,
               array_agg(o.position order by o.position) filter (where o.option_id is not null) as positions
        from elements as el
        left join voting.poll_options as o on o.poll_id = el.poll_id and o.option_id = el.option_id
        group by el.ord
    ),
    checked as (
        select input.ord, input.poll_id, input.voter_id, input.fingerprint, p as poll,
               chosen.ballot, chosen.positions,
               case
                   when jsonb_typeof(input.item) is distinct from 'object'
                        or input.item - array['poll_id', 'option_ids', 'voter_id', 'voter_fingerprint', 'ballot_id']
                           <> '{}'::jsonb
                        or not input.item ? 'poll_id'
                        or (jsonb_typeof(input.item -> 'poll_id') <> 'null' and input.poll_id is null)
                        or (input.item ? 'ballot_id' and jsonb_typeof(input.item -> 'ballot_id') <> 'null'
                            and input.ballot_id is null)
                        or input.options = '"malformed"'
                        or chosen.has_malformed
                       then 'invalid_ballot:Each ballot must be an object with poll_id, option_ids and voter_id or voter_fingerprint, with well-formed ids.'
                   when p.poll_id is null
                       then 'poll_not_found:There is no poll with this poll_id.'
                   when p.closed_at is not null or p.closes_at <= checked_at
                       then 'poll_closed:This poll is closed: it accepts no more votes.'
                   when jsonb_typeof(input.voter_id) = 'string'
                        and char_length(input.voter_id #>> '{}') not between 1 and 256
                       then 'login_required:voter_id must be a string of 1-256 characters.'
                   when input.voter_id is not null and jsonb_typeof(input.voter_id) not in ('string', 'null')
                       then 'login_required:voter_id must be a string of 1-256 characters.'
                   when jsonb_typeof(input.voter_id) is distinct from 'string' and not p.allow_anonymous
                       then 'login_required:This poll accepts votes from signed-in users only.'
                   when jsonb_typeof(input.voter_id) is distinct from 'string'
                        and (input.fingerprint is null
                             or char_length(input.fingerprint) not between 1 and 256
                             or input.fingerprint ~ '[[:cntrl:]]')
                       then 'invalid_fingerprint:Anonymous votes need a voter_fingerprint of 1-256 printable characters.'
                   when coalesce(chosen.n, 0) = 0 and input.options is distinct from '"not_flat"'
                       then 'invalid_ballot:Choose at least one option.'
                   when input.options = '"not_flat"' or chosen.has_null
                       then 'invalid_ballot:option_ids must be a flat JSON array of option ids, without nulls.'
                   when chosen.n > p.max_choices
                       then format('invalid_ballot:This poll allows at most %s choice(s) per ballot; got %s.', p.max_choices, chosen.n)
                   when chosen.n_distinct <> chosen.n
                       then 'invalid_ballot:Each option may appear only once in a ballot.'
                   when chosen.n_found <> chosen.n
                       then 'invalid_ballot:At least one option_id is not an option of this poll.'
               end as problem,
               input.ballot_id
        from input
        left join voting.polls as p on p.poll_id = input.poll_id and p.poll_id = any (fenced)
        left join chosen on chosen.ord = input.ord
    ),
    valid as (
        select c.*, keyed.voter_key, keyed.ballot_key,
               row_number() over (partition by c.poll_id, keyed.voter_key, keyed.ballot_key order by c.ord) = 1
                   as first_in_batch
        from checked as c
        cross join internal.voter_key_secret as secret,
             lateral (select internal.hmac_sha256(secret.inner_pad, secret.outer_pad,
                                                  case when jsonb_typeof(c.voter_id) = 'string'
                                                       then 'sub:' || (c.voter_id #>> '{}')
                                                       else 'fp:' || c.fingerprint end) as voter_key,
                             case when (c.poll).allow_multiple_votes then coalesce(c.ballot_id, gen_random_uuid())
                                  else '00000000-0000-0000-0000-000000000000'::uuid end as ballot_key) as keyed
        where c.problem is null
    ),
    inserted as (
        insert into voting.ballots (poll_id, voter_key, ballot_id, option_ids)
        select v.poll_id, v.voter_key, v.ballot_key, v.ballot from valid as v where v.first_in_batch
        order by v.poll_id, v.voter_key, v.ballot_key  -- key order: see Locks
        on conflict on constraint ballots_pkey do nothing
        returning ballots.poll_id, ballots.voter_key, ballots.ballot_id
    ),
    outcome as (
        select c.ord, c.problem, v.poll_id, v.voter_key, v.ballot_key, v.ballot, v.positions,
               (c.poll).option_count, (ins.poll_id is not null and v.first_in_batch) as is_recorded
        from checked as c
        left join valid as v on v.ord = c.ord
        left join inserted as ins
               on ins.poll_id = v.poll_id and ins.voter_key = v.voter_key and ins.ballot_id = v.ballot_key
    ),
    recorded_polls as (
        select o.poll_id, count(*) as ballots, max(o.option_count) as option_count
        from outcome as o where o.is_recorded group by o.poll_id
    ),
    recorded_positions as (
        select o.poll_id, pos, count(*) as n
        from outcome as o, unnest(o.positions) as pos where o.is_recorded group by o.poll_id, pos
    )
    select
        jsonb_agg(case
                      when o.problem is not null then
                          jsonb_build_object('status', 'rejected', 'code', split_part(o.problem, ':', 1),
                                             'message', substr(o.problem, strpos(o.problem, ':') + 1))
                      when o.is_recorded then
                          jsonb_build_object('status', 'recorded', 'poll_id', o.poll_id, 'option_ids', to_jsonb(o.ballot))
                      else '"pending"'::jsonb  -- replaced by its outcome below
                  end order by o.ord),
        jsonb_agg(jsonb_build_object('ord', o.ord, 'poll_id', o.poll_id,
                                     'voter_key', encode(o.voter_key, 'hex'), 'ballot_key', o.ballot_key,
                                     'option_ids', to_jsonb(o.ballot), 'positions', to_jsonb(o.positions))
                  order by o.poll_id, o.voter_key, o.ballot_key, o.ord)  -- key order: see Locks
            filter (where o.problem is null and not o.is_recorded),
        jsonb_build_object('recorded', count(*) filter (where o.is_recorded), 'changed', 0, 'unchanged', 0,
                           'rejected', count(*) filter (where o.problem is not null)),
        (select jsonb_agg(jsonb_build_object(
                    'poll_id', rp.poll_id, 'ballots', rp.ballots,
                    'votes', (select jsonb_agg(coalesce(x.n, 0) order by g.pos)
                              from generate_series(1, rp.option_count) as g(pos)
                              left join recorded_positions as x on x.poll_id = rp.poll_id and x.pos = g.pos)))
         from recorded_polls as rp)
    into results, pending, counts, tallies
    from outcome as o;

    for tally in select * from jsonb_array_elements(coalesce(tallies, '[]')) loop
        perform internal.add_to_tally((tally ->> 'poll_id')::uuid, (tally ->> 'ballots')::bigint,
                                      array(select jsonb_array_elements_text(tally -> 'votes')::bigint));
    end loop;

    -- The per-ballot path: ballots stored before this batch (retries, revotes) and repeats
    -- within the batch, which now meet the batch's own rows. In key order (pending is sorted
    -- so), so the row locks of revotes are taken in an order two batches agree on; the ballots
    -- of one key (one voter's, in one poll) in input order, which is all the order their
    -- outcomes depend on.
    for item in select e.value from jsonb_array_elements(coalesce(pending, '[]')) as e loop
        if poll.poll_id is distinct from (item ->> 'poll_id')::uuid then
            select p.* into poll from voting.polls as p where p.poll_id = (item ->> 'poll_id')::uuid;
        end if;
        select * into recorded
        from internal.record_ballot(poll, decode(item ->> 'voter_key', 'hex'), (item ->> 'ballot_key')::uuid,
                                    array(select jsonb_array_elements_text(item -> 'option_ids')::uuid),
                                    array(select jsonb_array_elements_text(item -> 'positions')::smallint));
        outcomes := outcomes || jsonb_build_object(item ->> 'ord', case
            when recorded.outcome = 'already_voted' then
                jsonb_build_object('status', 'rejected', 'code', 'already_voted',
                                   'message', 'You have already voted in this poll and it does not allow changing a vote.')
            else
                jsonb_build_object('status', recorded.outcome, 'poll_id', poll.poll_id, 'option_ids', to_jsonb(recorded.stored))
            end);
        counts := jsonb_set(counts, array[case when recorded.outcome = 'already_voted' then 'rejected'
                                               else recorded.outcome end],
                            to_jsonb((counts ->> case when recorded.outcome = 'already_voted' then 'rejected'
                                                      else recorded.outcome end)::bigint + 1));
    end loop;
    if outcomes <> '{}' then
        select jsonb_agg(coalesce(outcomes -> e.ordinality::text, e.value) order by e.ordinality)
        into results
        from jsonb_array_elements(results) with ordinality as e;
    end if;

    return counts || jsonb_build_object('results', coalesce(results, '[]'::jsonb));
end
$function$;
