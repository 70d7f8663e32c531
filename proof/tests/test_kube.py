"""tests/manifests.py's lookups on small hand-made inputs, each rule seen passing and failing: the manifests' tests
can only be as right as these are."""

import pytest
from manifests import find, labels_match, parse_quantity


@pytest.mark.parametrize(("quantity", "value"), [
    ("250m", 0.25), ("1", 1), (2, 2), ("64Mi", 64 * 2**20), ("1Gi", 2**30), ("2k", 2000), ("1.5G", 1.5e9)])
def test_parse_quantity_reads_decimal_and_binary_suffixes(quantity, value):
    assert parse_quantity(quantity) == pytest.approx(value)


@pytest.mark.parametrize(("selector", "matches"), [
    ({"app": "web"}, True),
    ({"matchLabels": {"app": "db"}}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, True),
    ({"matchLabels": {}}, True),  # an empty selector selects everything
])
def test_labels_match_follows_selector_semantics(selector, matches):
    assert labels_match(selector, {"app": "web", "tier": "front"}) is matches


def test_find_knows_a_generated_configmap_by_the_name_before_its_hash():
    manifests = [{"kind": "ConfigMap", "metadata": {"name": "web-5t8h9kbc7m"}, "data": {}}]
    assert find(manifests, "ConfigMap", "web") is manifests[0]
    with pytest.raises(LookupError):
        find(manifests, "ConfigMap", "we")
