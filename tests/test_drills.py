"""The drills of bench/drills.py, asserted: each runs its scenario against real containers of the slim image and
checks what it counted. `make drills` runs the same functions and only prints the counts.

Marked slow: together they take about two and a half minutes; `pytest -m "not slow"` leaves them out.
"""

import sys

import pytest
from conftest import REPOSITORY

# The scenarios live in bench/, a folder of scripts rather than a package, beside the benchmark that shares them.
sys.path.insert(0, str(REPOSITORY / "bench"))
import drills  # noqa: E402

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
