# Unit and stress tests: one executable per file in tests/unit/, one CTest
# test per case, each in its own process. A case is run as `<exe> <case>`;
# the list here must match the table in the file, which the extra test
# `<suite>/cases_registered` checks, so a new case cannot be forgotten.

# cpool_unit_suite(<suite> LABEL <label> TIMEOUT <seconds> CASES <case>...)
# builds tests/unit/test_<suite>.c into test_<suite> and registers
# <suite>/<case> for every case.
function(cpool_unit_suite suite)
  cmake_parse_arguments(S "" "LABEL;TIMEOUT" "CASES" ${ARGN})
  set(exe test_${suite})
  add_executable(${exe} ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_${suite}.c)
  target_include_directories(${exe} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${exe} PRIVATE cpool_static Threads::Threads)
  target_compile_definitions(${exe} PRIVATE CPOOL_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  foreach(case IN LISTS S_CASES)
    add_test(NAME ${suite}/${case} COMMAND ${exe} ${case})
    set_tests_properties(${suite}/${case} PROPERTIES
      TIMEOUT ${S_TIMEOUT} LABELS ${S_LABEL} SKIP_RETURN_CODE 77)
  endforeach()
  add_test(NAME ${suite}/cases_registered COMMAND ${exe} --registered ${S_CASES})
  set_tests_properties(${suite}/cases_registered PROPERTIES
    TIMEOUT 10 LABELS ${S_LABEL})
endfunction()

cpool_unit_suite(pool LABEL unit TIMEOUT 30 CASES
  foreign_checkin_rejected
  double_checkin_rejected
  double_checkin_after_close_rejected
  null_arguments_rejected
  checkin_broken_flag_closes
  checkin_resets_session
  checkin_failed_reset_closes
  available_reused_newest_first
  destroy_closes_outstanding_lease
  create_rejects_min_above_max
  create_accepts_min_with_unlimited_max
  create_rejects_zero_max_connecting
  create_rejects_negative_wait_queue_timeout
  create_rejects_negative_max_idle_time
  create_rejects_zero_maintenance_interval
  create_rejects_null_connector
  create_rejects_incomplete_connector
  create_rejects_small_struct_size
  ready_after_close_fails
  checkout_after_close_fails
  clear_paused_pool_bumps_generation
  unlimited_pool_serves_concurrent_leases
  clear_fails_waiters_at_once
  default_checkout_wait_is_bounded
  callback_reentry_refused_not_hung
  wait_queue_timeout_reports_counts
  wait_queue_timeout_follows_fake_clock
  connect_timeout_bounds_establishment
  checkout_timeout_zero_does_not_wait
  unobserved_checkin_counts_available
  unobserved_stale_not_reused
  unobserved_dead_parked_not_reused
  unobserved_idle_reaped
  unobserved_close_closes_returned)

cpool_unit_suite(interrupt LABEL unit TIMEOUT 30 CASES
  clear_interrupts_in_use
  clear_without_flag_does_not_interrupt
  clear_interrupt_spares_newer_connections
  clear_interrupts_pending_establishment
  clear_without_flag_leaves_pending
  close_interrupts_pending_establishment)

cpool_unit_suite(lb LABEL unit TIMEOUT 30 CASES
  clear_service_bumps_only_that_service
  clear_service_keeps_waiters
  clear_modes_are_exclusive
  service_generation_dropped_when_unused
  missing_service_id_fails_establishment
  clear_service_interrupts_only_that_service
  connect_error_never_pauses_lb_pool)

cpool_unit_suite(backpressure LABEL unit TIMEOUT 30 CASES
  connect_network
  connect_timeout
  tls_network
  tls_timeout
  handshake_network
  handshake_timeout
  dns_unlabelled
  tls_certificate_unlabelled
  auth_failure_unlabelled
  auth_network_unlabelled
  handshake_server_error_unlabelled
  population_error_labelled
  clear_on_connect_error_clears_unlabelled
  clear_on_connect_error_spares_backpressure)

cpool_unit_suite(maint LABEL unit TIMEOUT 30 CASES
  idle_reaped_in_background
  idle_reaped_by_maintain
  idle_clock_restarts_at_checkin
  idle_minimum_kept
  keepalive_replaces_dead_idle_connections
  min_pool_size_populated_in_background
  no_population_while_paused
  populated_connection_available_before_pending_released)

cpool_unit_suite(config LABEL unit TIMEOUT 30 CASES
  uri_take_cases
  uri_next_cases
  redact_cases
  url_options_taken_out
  env_overrides_code_url_overrides_env
  ignore_env_skips_environment
  invalid_values_name_option_value_and_range
  near_miss_of_pool_option_rejected
  profiles_set_presets_below_code
  options_set_by_name
  connector_ctx_made_from_target
  validation_none_skips_check
  validation_check_never_pings
  validation_ping_idle_after_threshold
  validation_always_pings
  validation_failure_replaced_within_checkout
  validation_on_fast_path
  validation_and_establishment_share_one_deadline
  no_time_to_validate_condemns_nothing
  bad_inputs_refused_with_clear_errors
  env_log_sink_writes_redacted_json_lines
  misspelt_env_variable_warned
  param_table_parsing
  options_doc_table_matches_rows)

cpool_unit_suite(lifecycle LABEL unit TIMEOUT 30 CASES
  lifetime_closes_returned_connection
  lifetime_expired_never_handed_out
  lifetime_unobserved_fast_path
  lifetime_jitter_spreads_expiry
  expired_replaced_without_herd
  recycle_after_uses
  recycle_after_uses_fast_path
  invalid_lifetime_options_rejected
  stats_count_what_happened
  stats_fast_path_counted
  histogram_buckets_and_quantiles)

cpool_unit_suite(resilience LABEL unit TIMEOUT 30 CASES
  backoff_delays_next_attempt
  backoff_capped
  backoff_jitter_bounds
  backoff_reset_by_success
  breaker_fails_fast_with_last_error
  breaker_still_serves_available
  breaker_single_probe_per_step
  breaker_closes_on_success_and_refills
  refill_obeys_backoff
  breaker_opening_fails_waiters
  shutdown_waits_for_returns
  shutdown_interrupts_after_grace
  shutdown_rejects_new_checkouts_at_once
  leak_reported_with_holder
  leak_reclaimed_frees_slot
  leak_reclaimed_never_returned_closed_at_destroy
  leak_options_validated
  wait_connected_fills_min_pool_size
  wait_connected_retries_then_fails_with_last_error
  wait_connected_succeeds_when_backend_comes_up
  wait_connected_reaches_max_with_tenant_reserve
  probe_ends_backoff_when_server_returns
  open_waits_for_startup_connections
  caller_deadline_does_not_trip_breaker
  shutdown_cancels_establishment_with_eshutdown
  wait_connected_reports_current_failure
  code_values_checked_without_overflow
  queued_checkout_served_after_backoff_step
  shutdown_counts_reclaimed_leases
  reused_struct_starts_a_fresh_lease)

cpool_unit_suite(tenants LABEL unit TIMEOUT 60 CASES
  tenant_cap_enforced
  capped_waiter_skipped_not_starved
  minimum_reserved_for_tenant
  saturating_tenant_capped_does_not_starve_other
  saturating_tenant_does_not_take_reserved_minimum
  tenant_configuration_errors
  closed_lease_frees_tenant_for_available_connection
  first_tenant_refused_after_clear
  session_never_crosses_tenants
  tenant_gets_its_own_connection_back
  handoff_to_other_tenant_resets_session
  session_reset_failure_or_absence_closes)

cpool_unit_suite(log LABEL unit TIMEOUT 30 CASES
  lifecycle_messages
  stale_reason
  idle_reason
  connection_error_reasons
  timeout_reason
  pool_closed_checkout_reason
  level_filters_debug_records
  json_format
  json_lines_carry_time_and_pool
  json_valid_for_every_input)

# TSan cannot run a child that starts threads after a multi-threaded
# fork(), which is what a pool with a maintenance thread does; those two
# cases are left out of the TSan build (not skipped: a skip fails make test)
# and run in the plain and ASan builds.
set(fork_cases child_discards_inherited_connections
               child_checkin_of_inherited_lease_abandons)
if(NOT CPOOL_SANITIZE STREQUAL "thread")
  list(APPEND fork_cases child_of_pool_with_maintenance_thread fork_while_pool_busy
       child_maintenance_thread_sleeps)
endif()
cpool_unit_suite(fork LABEL unit TIMEOUT 40 CASES ${fork_cases})

# Stress: TSan makes these several times slower, hence the long timeout.
cpool_unit_suite(stress LABEL stress TIMEOUT 180 CASES
  clear_interrupt_churn
  clear_interrupt_churn_unobserved
  close_under_load
  close_under_load_unobserved)

# Allocation-failure injection: the executable wraps malloc, calloc, realloc,
# aligned_alloc, strdup and strndup with the GNU linker's --wrap, which reaches the calls in
# the objects it links -- including libcpool.a's. It needs the static
# library (a shared libcpool resolves its own calls at run time, past the
# wrappers), so a BUILD_SHARED_LIBS build leaves the suite out.
get_target_property(cpool_lib_type cpool_static TYPE)
if(cpool_lib_type STREQUAL "STATIC_LIBRARY" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  cpool_unit_suite(oom LABEL unit TIMEOUT 60 CASES
    create_fails_cleanly
    checkout_establishment_oom
    waiter_granted_oom
    lb_service_entry_oom
    sweep)
  target_link_options(test_oom PRIVATE
    -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=aligned_alloc
    -Wl,--wrap=strdup,--wrap=strndup)
else()
  message(STATUS "cpool: oom suite left out (needs a static libcpool on Linux)")
endif()
