"""Connection arithmetic: every web process's pool, at its most, plus migrate and an operator's psql, fits in
PostgreSQL's max_connections, in Compose and at the Kubernetes autoscaler's maximum during a rollout."""

import re

import psycopg
import pytest
import yaml
from conftest import REPOSITORY

import app as app_module

# One migrate run's connection (an init container's, or an operator's `flask migrate`), one operator's psql session.
OPERATORS = {"migrate": 1, "psql": 1}
BUDGET_COMMENT = re.compile(
    r"\((\d+) replicas \+ (\d+) rollout surge\) × (\d+) gunicorn workers\s*#?\s*× (\d+) pooled connections = (\d+),"
    r" \+ (\d+) migrate run \+ (\d+) psql = (\d+), under Postgres' max_connections (\d+) less its\s*#?\s*(\d+)")


def k8s(name):
    return yaml.safe_load((REPOSITORY / "k8s" / "base" / name).read_text())


def per_process(environment):
    """(workers, pool max) of one web container with `environment` set on top of the images' defaults, as app.py's
    configuration reads them (gunicorn.conf.py takes its worker count from there)."""
    read = {name: value for name, value in environment.items()
            if name == "WEB_CONCURRENCY" or name.startswith("DATABASE_POOL_")}
    config = app_module.load_config(read)
    return config.workers, config.pool_max_size


@pytest.fixture(scope="module")
def available(postgres):
    """What the Postgres image allows ordinary roles: max_connections less the slots reserved for superusers."""
    with psycopg.connect(postgres.get_connection_url(driver=None)) as conn:
        limit, reserved = (int(conn.execute(f"SHOW {name}").fetchone()[0])
                           for name in ("max_connections", "superuser_reserved_connections"))
    return limit, reserved


def web_environment():
    container = next(c for c in k8s("web-deployment.yaml")["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "web")
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def kubernetes_budget():
    pods = k8s("web-hpa.yaml")["spec"]["maxReplicas"] + k8s("web-deployment.yaml")["spec"]["strategy"][
        "rollingUpdate"]["maxSurge"]
    workers, pool_max = per_process(web_environment())
    return pods, workers, pool_max


def test_kubernetes_at_its_autoscaling_maximum_during_a_rollout_stays_under_max_connections(available):
    limit, reserved = available
    pods, workers, pool_max = kubernetes_budget()
    total = pods * workers * pool_max + sum(OPERATORS.values())
    assert total <= limit - reserved, f"{pods} pods × {workers} workers × {pool_max} + {OPERATORS} = {total}"


def test_the_budget_comment_in_the_autoscaler_shows_the_sum_the_manifests_make(available):
    found = BUDGET_COMMENT.search((REPOSITORY / "k8s" / "base" / "web-hpa.yaml").read_text())
    assert found, "k8s/base/web-hpa.yaml: the connection budget comment is missing or reworded"
    replicas, surge, workers, pool_max, pooled, migrate, psql, total, limit, reserved = map(int, found.groups())
    pods = k8s("web-hpa.yaml")["spec"]["maxReplicas"] + k8s("web-deployment.yaml")["spec"]["strategy"][
        "rollingUpdate"]["maxSurge"]
    assert (replicas + surge, workers, pool_max) == kubernetes_budget() and pods == replicas + surge
    assert pooled == (replicas + surge) * workers * pool_max
    assert (migrate, psql) == (OPERATORS["migrate"], OPERATORS["psql"]) and total == pooled + migrate + psql
    assert (limit, reserved) == available


def test_compose_stays_under_max_connections(available):
    limit, reserved = available
    web = yaml.safe_load((REPOSITORY / "compose.yaml").read_text())["services"]["web"]
    replicas = web.get("deploy", {}).get("replicas", 1)
    workers, pool_max = per_process({name: str(value) for name, value in web["environment"].items()
                                     if not isinstance(value, dict)})
    assert replicas * workers * pool_max + sum(OPERATORS.values()) <= limit - reserved
