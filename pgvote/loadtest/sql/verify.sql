-- Exactly-once check of one poll after a load run (pgvote/loadtest/verify.py turns the row into problems).
-- Inputs: %(poll)s the run's poll; %(acked)s jsonb {identity: [option ids]} of the acknowledged voters
-- ("fp:<fingerprint>" or "sub:<id>"); %(attempted)s text[] of every identity tried (acknowledged or not);
-- %(results)s jsonb: api.poll_results as the anonymous role read it, null when it found no poll.
-- Voters are stored only as HMAC digests, so each identity's key is computed here by internal.voter_key.
with run as (
    select i.identity, a.value as options, internal.voter_key(i.identity) as voter_key
    from (select key as identity from jsonb_each(%(acked)s::jsonb)
          union select unnest(%(attempted)s::text[])) as i
    left join jsonb_each(%(acked)s::jsonb) as a on a.key = i.identity
),
stored as (
    select b.voter_key, b.option_ids::text[] as option_ids, r.identity, r.options
    from voting.ballots as b left join run as r using (voter_key)
    where b.poll_id = %(poll)s
),
derived as (select o, count(*) as n from stored, unnest(option_ids) as o group by o),
expected as (select o, count(*) as n from run, jsonb_array_elements_text(options) as o group by o),
reported as (
    select o ->> 'option_id' as o, (o ->> 'votes')::bigint as n
    from jsonb_array_elements(coalesce(%(results)s::jsonb -> 'options', '[]')) as o
)
select
    (select count(*) from run where options is not null) as accepted,
    (select count(*) from stored) as stored,
    (select count(*) from run where options is not null
        and voter_key not in (select voter_key from stored)) as lost,
    (select count(*) - count(distinct voter_key) from stored) as duplicated,
    (select count(*) from stored where identity is null) as unexpected,
    (select count(*) from stored where identity is not null and options is null) as unacknowledged,
    (select count(*) from stored where options is not null
        and not (option_ids @> array(select jsonb_array_elements_text(options))
                 and option_ids <@ array(select jsonb_array_elements_text(options)))) as mismatched,
    (%(results)s::jsonb ->> 'total_ballots')::bigint as results_total,
    %(results)s::jsonb is not null
        and not exists (select from derived full join reported using (o) where derived.n is distinct from reported.n
                        and coalesce(derived.n, 0) + coalesce(reported.n, 0) > 0) as tallies_match,
    not exists (select from expected full join reported using (o) where expected.n is distinct from reported.n
                and coalesce(expected.n, 0) + coalesce(reported.n, 0) > 0) as tallies_expected_match
