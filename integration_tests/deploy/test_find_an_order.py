"""The documented way to find an order's hops works on Jaeger with Cassandra storage.

Jaeger v2.8.0 answers a tag search within one service only
(internal/storage/v1/cassandra/spanstore/reader.go: tag_index is read by service_name, tag_key and
tag_value, and validateQuery refuses tags without a service). In link mode each hop is a trace of
one service, so the procedure is one search per service, never "pick any service".
"""

from __future__ import annotations

import re

from .deploy_files import doc, doc_section

FLOW_SERVICES = ("shop-api", "srm-api", "mes")
# what Jaeger's reader.go refuses or cannot do, as the docs used to promise it
FALSE_PROMISES = (
    re.compile(r"pick any of the services", re.IGNORECASE),
    re.compile(r"every kept hop of\s+order \d+ is listed", re.IGNORECASE),
    re.compile(r"Service: any of", re.IGNORECASE),
)


def test_no_doc_promises_a_tag_search_across_services() -> None:
    """Neither deploy.md nor find-a-lost-order.md says one tag search lists every service's hops."""
    for name in ("deploy.md", "find-a-lost-order.md"):
        text = doc(name)
        for promise in FALSE_PROMISES:
            assert not promise.search(text), f"docs/{name}: {promise.pattern!r}"


def test_the_deploy_procedure_searches_each_service_of_the_flow_by_order_id() -> None:
    """docs/deploy.md searches order.id once per service, mes, srm-api and shop-api, without a duration."""
    section = doc_section("deploy.md", "Find an order's hops in Jaeger")
    assert "order.id=17" in section
    assert "error=true" in section
    for service in FLOW_SERVICES:
        assert f"`{service}`" in section, f"no search in {service}"
    assert "one search per service" in section
    assert "Duration" in section, "Cassandra cannot combine a duration with tags: say so"


def test_the_lost_order_guide_searches_one_service_at_a_time() -> None:
    """find-a-lost-order.md's Jaeger steps name a service in every search and go back through the flow."""
    section = doc_section("find-a-lost-order.md", "Where did order 17 stop? In Jaeger")
    assert "*Service* `mes`" in section
    named = set(re.findall(r"`(shop-api|srm-api|mes)`", section))
    assert named == set(FLOW_SERVICES), named
    assert "once per service" in section
