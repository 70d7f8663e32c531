"""Drills: what the service does when something goes wrong, each printing what it counted. `make drills` runs them
all (__main__.py) and writes docs/drills.md; proof/tests/test_drills.py runs the same functions and asserts their goals.

Every drill starts its own containers (tests/containers.py) and removes them; the Compose drills run compose.yaml
under a project name, port and password file of its own, so they never touch a developer's stack or secrets/.
Each result names its goals, met or not (common.Drill), so the document and the tests judge by the same rules.
One module per drill, named for it; common.py holds what they share.
"""

from proof.drills.backup_under_writes import backup_under_writes
from proof.drills.bad_input import bad_input
from proof.drills.common import Durability
from proof.drills.database_frozen import database_frozen
from proof.drills.database_outage import database_outage
from proof.drills.disk_full import disk_full
from proof.drills.durability_across_compose_down_up import durability_across_compose_down_up
from proof.drills.durability_after_db_kill import durability_after_db_kill
from proof.drills.graceful_stop import graceful_stop
from proof.drills.log_reader_paused import log_reader_paused
from proof.drills.raw_fuzz import raw_fuzz
from proof.drills.slow_clients import slow_clients
from proof.drills.table_locked import table_locked
from proof.drills.too_many_connections import too_many_connections
from proof.drills.worker_killed import worker_killed

DRILLS = (durability_after_db_kill, durability_across_compose_down_up, graceful_stop, database_outage,
          database_frozen, table_locked, backup_under_writes, disk_full, worker_killed, too_many_connections,
          log_reader_paused, bad_input, raw_fuzz, slow_clients)

__all__ = ["DRILLS", "Durability"]
