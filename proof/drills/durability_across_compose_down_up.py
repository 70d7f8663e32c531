"""Durability: notes acknowledged across `docker compose down` and `up` are all kept, in the db_data volume."""

import time

from containers import compose_project
from load import Load

from proof.drills.common import durability


def durability_across_compose_down_up(image):
    """A writer posts notes across `docker compose down` and `docker compose up`; the db_data volume keeps them."""
    with compose_project(image) as project:
        with Load(project.url) as writer:
            writer.wait_for_acknowledged(200)
            project.compose("down")
            project.up()
            writer.wait_for_acknowledged(200, after=time.monotonic())
        return durability("docker compose down, then up", writer, project.url)
