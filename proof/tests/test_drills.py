"""The drills of proof/drills/, asserted: each runs its scenario against real containers of the slim image and
fails on any goal it missed. The goals live with each drill's result, where `make drills` reads them for
docs/drills.md; a failure names the goal and prints every count.

Marked slow: together they take about five minutes; `pytest -m "not slow"` leaves them out.
"""

import pytest

from proof import drills

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def test_no_acknowledged_note_is_lost_when_the_db_container_is_killed(images):
    result = drills.durability_after_db_kill(images["slim"])
    assert result.missed() == [], result


def test_no_acknowledged_note_is_lost_across_compose_down_and_up(images):
    result = drills.durability_across_compose_down_up(images["slim"])
    assert result.missed() == [], result


def test_docker_stop_under_load_lets_every_accepted_request_finish_and_exits_0(images):
    result = drills.graceful_stop(images["slim"])
    assert result.missed() == [], result


def test_db_outage_answers_503_json_promptly_and_recovers_without_a_restart(images):
    result = drills.database_outage(images["slim"])
    assert result.missed() == [], result


def test_ten_thousand_bad_requests_get_no_5xx_and_leak_no_traceback_or_sql(images):
    result = drills.bad_input(images["slim"])
    assert result.planned == 10_000 and result.missed() == [], result


def test_slow_idle_and_trickling_clients_do_not_delay_other_requests_and_are_disconnected_within_their_bounds(images):
    result = drills.slow_clients(images["slim"])
    assert len(result.phases) == 6 and result.missed() == [], result


def test_a_frozen_db_gets_503_json_within_the_database_timeout_and_recovers_without_a_restart(images):
    result = drills.database_frozen(images["slim"])
    assert result.missed() == [], result


def test_a_backup_taken_under_writes_restores_every_note_acknowledged_before_it_once_and_byte_for_byte(images):
    result = drills.backup_under_writes(images["slim"])
    assert result.missed() == [], result


def test_a_full_disk_refuses_writes_with_503_json_keeps_reads_and_notes_and_writes_resume_once_space_is_freed(images):
    result = drills.disk_full(images["slim"])
    assert result.missed() == [], result


def test_a_worker_killed_under_load_fails_only_its_own_requests_and_is_replaced_without_a_restart(images):
    result = drills.worker_killed(images["slim"])
    assert result.missed() == [], result


def test_more_replicas_than_max_connections_get_503_json_within_the_pool_wait_and_recover_when_replicas_go(images):
    result = drills.too_many_connections(images["slim"])
    assert result.missed() == [], result


def test_a_table_locked_under_load_gets_503_json_in_time_and_the_pool_keeps_its_connections(images):
    result = drills.table_locked(images["slim"])
    assert result.missed() == [], result


def test_a_paused_log_reader_costs_log_lines_never_answers_and_lines_resume_with_the_reader(images):
    result = drills.log_reader_paused(images["slim"])
    assert result.missed() == [], result


def test_ten_thousand_byte_mutated_raw_requests_get_no_5xx_no_traceback_and_no_connection_outlives_its_deadline(
        images):
    result = drills.raw_fuzz(images["slim"])
    assert result.planned == 10_000 and result.missed() == [], result


def test_every_drill_is_asserted_here_and_run_by_make_drills():
    source = open(__file__).read()
    asserted = {name for name in dir(drills) if f"drills.{name}(images" in source}
    assert {drill.__name__ for drill in drills.DRILLS} == asserted


def test_a_missed_goal_is_named_in_the_failure_and_in_docs_drills_md():
    lost = drills.Durability("a drill's own words", acknowledged=10, lost=1, refused=0)
    assert lost.missed() == ["every acknowledged note kept"]
    assert "MISSED: every acknowledged note kept" in str(lost)
    [[drill, counted, goals, met]] = lost.rows()
    assert (drill, goals, met) == ("durability: a drill's own words", "every acknowledged note kept",
                                   "**no**: every acknowledged note kept")
    assert "10 notes acknowledged with 201, 1 of them lost" in counted
