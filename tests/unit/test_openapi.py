"""The OpenAPI document covers every route and is a valid OpenAPI 3.1 document."""

from duetide.web.api import BY_OPERATION, ENDPOINTS, ROUTES
from duetide.web.openapi import document


def test_every_route_is_documented_and_nothing_else():
    routes = {(r.rule.replace("<", "{").replace(">", "}"), m.lower())
              for r in ROUTES.iter_rules()
              for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}  # fmt: skip
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    assert routes == documented
    assert len(routes) == len(ENDPOINTS) == len(BY_OPERATION)  # no operation declared twice


def test_document_validates_against_the_openapi_31_metaschema():
    from openapi_spec_validator import validate

    validate(document())


def test_writes_declare_the_rate_limit_and_reads_need_a_token():
    paths = document()["paths"]
    assert "429" in paths["/tasks"]["post"]["responses"]
    assert paths["/tasks"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_commands_say_a_signed_one_needs_no_token():
    """The document said every command needs a bearer token: a client generated from it
    sent one, or refused to send a signed command without one."""
    paths = document()["paths"]
    assert paths["/commands"]["post"]["security"] == [{"bearer": []}, {}]
    optional = [
        p for p, ops in paths.items() for op in ops.values() if {} in op.get("security", [])
    ]
    # the stream's token may come as `access_token` (an EventSource sends no header)
    assert sorted(optional) == ["/activity/stream", "/commands"]


def test_every_201_documents_its_location_header():
    created = [
        (path, method, op["responses"]["201"])
        for path, ops in document()["paths"].items()
        for method, op in ops.items()
        if "201" in op["responses"]
    ]
    assert {(path, method) for path, method, _ in created} == {
        ("/tasks", "post"), ("/tasks/{task_id}/reminders", "post"), ("/commands", "post"),
        ("/calendar/feed-token", "post"), ("/subscriptions", "post"),
    }  # fmt: skip
    assert all(response["headers"]["Location"]["required"] for *_, response in created)


def test_errors_document_details_as_a_list():
    schemas = document()["components"]["schemas"]
    detail = schemas["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message", "details"}
    assert detail["properties"]["details"]["type"] == "array"


def test_the_documentation_routes_are_listed_and_public():
    paths = document()["paths"]
    for path in ("/", "/docs", "/docs/assets/{version}/{name}", "/asyncapi.json"):
        assert "security" not in paths[path]["get"], path
    assert list(paths["/docs"]["get"]["responses"]["200"]["content"]) == ["text/html"]
    assert list(paths["/asyncapi.json"]["get"]["responses"]["200"]["content"]) == [
        "application/json"
    ]
    assert set(paths["/"]["get"]["responses"]) == {"302"}
