"""The HTTP contract on a 2-shard stack: the single node's tests, run again through the PL/Proxy router.

The same test functions as tests/test_http_contract.py and tests/test_contract.py, collected here a
second time with this module's `stack`, `api`, `admin_url` and `admin` (tests/fixtures/shards.py): a
router and two shard clusters behind the same nginx, PostgREST and PgBouncer. `admin` is every
database of the installation (ClusterAdmin), so the checks that nothing was written, or that a ballot
is stored once, read the shards.

Chosen: every test of an answer the API gives (each error code with its status, PostgREST's own
answers, nginx's limits, the rate limits, identity, re-casts, GUC hygiene) and the live results, whose
publisher reads api.poll_results through the router. Left to the single node,
because sharding changes nothing they test: the source and catalog checks that read procedures/ or
compare the README with it (the router's own are in tests/test_shards.py), and the topology tests
of a private stack (replicas, PgBouncer crashes), whose nginx / PostgREST / PgBouncer are the same
processes here. test_signatures_match_json_keys_and_volatility reads one database's catalog: its
router twin, test_router_api_is_the_single_node_api, compares the router's with a shard's.
"""
from __future__ import annotations

from test_contract import (
    test_anon_casts_on_anonymous_poll_and_gets_401_for_creator_functions,
    test_every_api_error_raises_parseable_pgrst_json,
    test_happy_path_body_and_response_gucs_parse,
    test_jwt_role_comes_from_the_claim_and_sub_is_the_voter,
    test_no_guc_leaks_into_the_next_transaction_through_pgbouncer,
    test_pre_request_hook_is_configured_private_and_executable,
    test_pre_request_hook_is_no_endpoint,
    test_pre_request_hook_limits_writes_and_lets_reads_through,
    test_recast_unchanged_then_changed_or_409,
)
from test_http_contract import (
    role_without_grants,
    test_a_megabyte_body_to_a_small_endpoint_is_nginx_413_in_the_api_shape,
    test_a_role_that_may_not_execute_the_function_is_403_and_anonymous_is_401,
    test_bodies_that_are_no_json_object_are_4xx_never_5xx,
    test_cast_votes_body_over_its_limit_is_413_and_a_megabyte_of_junk_is_a_clean_400,
    test_every_error_code_over_http_with_its_status,
    test_forged_x_real_ip_and_x_forwarded_for_change_nothing,
    test_get_runs_stable_functions_and_refuses_writes,
    test_json_values_arrive_as_postgresql_reads_their_text,
    test_jwt_failures_exactly_as_postgrest_answers_them,
    test_jwt_role_without_any_grant_is_403,
    test_malformed_http_is_400_in_the_api_shape,
    test_maximal_create_poll_passes_with_non_ascii_labels,
    test_maximal_valid_cast_votes_batch_passes_nginx_and_is_recorded,
    test_methods_nginx_and_postgrest_refuse_are_405_in_the_api_shape,
    test_unknown_function_or_unknown_body_key_is_404_pgrst202,
    test_vote_endpoint_burst_then_nginx_429_per_source_address,
    test_wrong_json_types_are_400_never_5xx,
)
from test_live import (
    test_a_burst_ends_on_the_exact_final_results_and_never_goes_backwards,
    test_a_watcher_gets_the_current_results_at_once_then_every_change,
    test_an_unknown_poll_is_404_and_creates_no_channel,
    test_closing_a_poll_is_pushed,
)

from fixtures.shards import sharded_fixtures

stack, api, admin_url, admin = sharded_fixtures()

__all__ = [
    "admin", "admin_url", "api", "role_without_grants", "stack",
    "test_a_burst_ends_on_the_exact_final_results_and_never_goes_backwards",
    "test_a_watcher_gets_the_current_results_at_once_then_every_change",
    "test_an_unknown_poll_is_404_and_creates_no_channel",
    "test_closing_a_poll_is_pushed",
    "test_a_megabyte_body_to_a_small_endpoint_is_nginx_413_in_the_api_shape",
    "test_a_role_that_may_not_execute_the_function_is_403_and_anonymous_is_401",
    "test_anon_casts_on_anonymous_poll_and_gets_401_for_creator_functions",
    "test_bodies_that_are_no_json_object_are_4xx_never_5xx",
    "test_cast_votes_body_over_its_limit_is_413_and_a_megabyte_of_junk_is_a_clean_400",
    "test_every_api_error_raises_parseable_pgrst_json",
    "test_every_error_code_over_http_with_its_status",
    "test_forged_x_real_ip_and_x_forwarded_for_change_nothing",
    "test_get_runs_stable_functions_and_refuses_writes",
    "test_happy_path_body_and_response_gucs_parse",
    "test_json_values_arrive_as_postgresql_reads_their_text",
    "test_jwt_failures_exactly_as_postgrest_answers_them",
    "test_jwt_role_comes_from_the_claim_and_sub_is_the_voter",
    "test_jwt_role_without_any_grant_is_403",
    "test_malformed_http_is_400_in_the_api_shape",
    "test_maximal_create_poll_passes_with_non_ascii_labels",
    "test_maximal_valid_cast_votes_batch_passes_nginx_and_is_recorded",
    "test_methods_nginx_and_postgrest_refuse_are_405_in_the_api_shape",
    "test_no_guc_leaks_into_the_next_transaction_through_pgbouncer",
    "test_pre_request_hook_is_configured_private_and_executable",
    "test_pre_request_hook_is_no_endpoint",
    "test_pre_request_hook_limits_writes_and_lets_reads_through",
    "test_recast_unchanged_then_changed_or_409",
    "test_unknown_function_or_unknown_body_key_is_404_pgrst202",
    "test_vote_endpoint_burst_then_nginx_429_per_source_address",
    "test_wrong_json_types_are_400_never_5xx",
]
