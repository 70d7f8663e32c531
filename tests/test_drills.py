"""The drills of tools/break/drills.py, asserted: each runs its scenario against real containers of the slim image and
checks what it counted. `make drills` runs the same functions and only prints the counts.

Marked slow: together they take about two and a half minutes; `pytest -m "not slow"` leaves them out.
"""

import drills  # tools/break/drills.py, on the path by pytest.ini
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.docker]


def test_no_acknowledged_note_is_lost_when_the_db_container_is_killed(images):
    result = drills.durability_after_db_kill(images["slim"])
    assert result.acknowledged > 0 and result.lost == 0, result


def test_no_acknowledged_note_is_lost_across_compose_down_and_up(images):
    result = drills.durability_across_compose_down_up(images["slim"])
    assert result.acknowledged > 0 and result.lost == 0, result


def test_docker_stop_under_load_lets_every_accepted_request_finish_and_exits_0(images):
    result = drills.graceful_stop(images["slim"])
    assert result.answered > 0, result
    assert (result.cut, result.server_errors, result.exit_code) == (0, 0, 0), result
    assert result.stop_seconds < drills.GRACEFUL_TIMEOUT, result


def test_db_outage_answers_503_json_promptly_and_recovers_without_a_restart(images):
    result = drills.database_outage(images["slim"])
    assert result.requests > 0 and result.other == 0, result
    assert result.slowest <= drills.DATABASE_WAIT_SECONDS + 1, result
    assert result.recovery <= drills.RECOVERY_BOUND_SECONDS and result.restarts == 0, result


def test_ten_thousand_bad_requests_get_no_5xx_and_leak_no_traceback_or_sql(images):
    result = drills.bad_input(images["slim"])
    assert result.requests >= 10_000, result
    assert (result.server_errors, result.leaks, result.unanswered) == ([], [], 0), result


def test_slow_idle_and_trickling_clients_do_not_delay_other_requests_and_are_disconnected_within_their_bounds(images):
    result = drills.slow_clients(images["slim"])
    for phase in result.phases:
        assert phase.sent > 0 and phase.answered == phase.sent and phase.p99_ms <= 100, phase
        # Every socket of the first round must be closed within the phase: a phase no longer than the slow-body
        # bound would otherwise let a slow body the server never closes pass as "not yet outlived".
        assert phase.closed_by_server >= phase.sockets and phase.outlived == 0, phase
        assert phase.max_lifetime <= phase.bound + drills.SLACK_SECONDS, phase


def test_a_frozen_db_gets_503_json_within_the_database_timeout_and_recovers_without_a_restart(images):
    result = drills.database_frozen(images["slim"])
    assert result.requests > 0 and (result.other, result.late) == (0, 0), result
    assert result.recovery <= drills.RECOVERY_BOUND_SECONDS, result
