"""/api/openapi.json is generated from the route table and the bodies the views decode, so the two cannot drift:
every API route the app serves is in the document, and each documented request body and query is the one its
view checks, field for field (over real HTTP, from the document as served)."""

from __future__ import annotations

from kakuremichi.control.app import create_app
from kakuremichi.control.openapi import DOCUMENT

_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method.upper(), operation


def test_every_api_route_is_documented(settings):
    app = create_app(settings)
    served = {(rule.rule, method) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") and rule.rule != "/api/openapi.json"
              for method in rule.methods - _IGNORED_METHODS}
    documented = {(path.replace("{id}", "<item_id>").replace("{linkId}", "<link_id>"), method)
                  for path, method, _ in _operations(DOCUMENT)}
    # list, create, get, change, delete of each kind; rotate-key of two; a tunnel's share links (create, list,
    # revoke) and revoke-sessions; install
    assert len(served) == 3 * 5 + 2 + 4 + 1
    assert served == documented


async def test_each_documented_body_is_the_one_its_view_decodes(control):
    document = (await control.api.get("/api/openapi.json")).json()
    assert document == DOCUMENT
    schemas = document["components"]["schemas"]
    checked = set()
    for path, method, operation in _operations(document):
        url = path.replace("{id}", "nope").replace("{linkId}", "nope")  # a body is checked before the id is looked up
        if "requestBody" in operation:
            reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            schema = schemas[reference.rpartition("/")[2]]
            fields = set(schema["properties"])
            wrong = await control.api.request(method, url, json={**dict.fromkeys(fields, []), "undocumented": 1})
            assert wrong.status_code == 400, (method, path, wrong.text)
            details = wrong.json()["details"]
            assert set(details) == fields | {"undocumented"}, (method, path)
            assert details["undocumented"] == "unknown field" and all(details.values())
            empty = await control.api.request(method, url, json={})
            if schema["required"] or "anyOf" in schema:
                alternative = schema["anyOf"][0]["required"] if "anyOf" in schema else []  # the first one's
                assert empty.json()["details"] == dict.fromkeys(schema["required"] + alternative, "required"), \
                    (method, path)
            else:  # nothing is required: an empty body is a valid change of nothing, of an item that is not there
                assert empty.status_code == 404, (method, path, empty.text)
            checked.add((method, path))
        query = [parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "query"]
        if query:
            wrong = await control.api.request(method, url, params=dict.fromkeys(query, "x"))
            assert wrong.status_code == 400 and set(wrong.json()["details"]) == set(query), (method, path)
            checked.add((method, path))
    assert len(checked) == 3 * 3 + 2  # each kind's list, create and change; creating a share link, revoking sessions
