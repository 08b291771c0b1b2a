-- Who may do what: the whole truth, in one place. Re-applied after every upgrade, right
-- after procedures/ (same transaction), so it is idempotent: it first takes away every
-- privilege API roles could hold on our objects, then grants exactly these.
--
-- API roles (anon, authenticated, ingest) get USAGE on schema api and EXECUTE on api
-- functions only. No table privileges anywhere: every api function is SECURITY DEFINER
-- with a pinned search_path. Nothing of ours is executable by PUBLIC.

revoke all on schema api, voting, internal from public, anon, authenticated, ingest;
revoke all on all tables in schema voting, internal from public, anon, authenticated, ingest;
revoke all on all functions in schema api, internal from public, anon, authenticated, ingest;

grant usage on schema api to anon, authenticated, ingest;

grant execute on function api.cast_vote(uuid, uuid[], text, uuid)  to anon, authenticated;
grant execute on function api.poll_results(uuid)                   to anon, authenticated;
grant execute on function api.create_poll(text, text[], integer, boolean, boolean, boolean, timestamptz)
                                                                   to authenticated;
grant execute on function api.close_poll(uuid)                     to authenticated;
grant execute on function api.cast_votes(jsonb)                    to ingest;
