-- Exactly-once check of one poll after a load run (pgvote/loadtest/scenarios.py): the counts, and `problems`, one
-- line per count that must be zero or flag that must hold (none: exactly once).
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
),
checks as (
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
)
select checks.*, array_remove(array[
    case when lost > 0 then lost || ' acknowledged ballots are not stored' end,
    case when duplicated > 0 then duplicated || ' voters have more than one ballot' end,
    case when unexpected > 0 then unexpected || ' stored ballots belong to voters this run never cast for' end,
    case when unacknowledged > 0 then unacknowledged || ' ballots were stored but never acknowledged to their voter' end,
    case when mismatched > 0 then mismatched || ' stored ballots differ from what the voter cast' end,
    case when stored <> accepted then format('stored %%s != accepted %%s', stored, accepted) end,
    case when %(results)s::jsonb is null then 'poll_results found no such poll'
         when results_total <> stored then format('poll_results total_ballots %%s != stored %%s', results_total, stored)
    end,
    case when not tallies_match then 'poll_results per-option counts differ from the stored ballots' end,
    case when not tallies_expected_match then 'poll_results per-option counts differ from the acknowledged ballots' end
], null) as problems
from checks
