"""The OpenAPI document covers every route, and the docs pages load nothing from elsewhere."""

import re

import yaml
from starlette.routing import Route

from app.web import app as http
from app.web import openapi


def test_spec_covers_every_route():
    routes = {
        (r.path, m.lower())
        for r in http.ROUTES
        if isinstance(r, Route)
        for m in r.methods or ()
        if m != "HEAD"
    }
    documented = {(p, m) for p, ops in openapi.document()["paths"].items() for m in ops}
    assert routes == documented


def test_every_operation_documents_its_responses():
    for path, ops in openapi.document()["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)
            assert op["summary"], (path, method)


async def test_spec_served_as_json_and_yaml(service):
    as_json = await service.http.get("/openapi.json")
    as_yaml = await service.http.get("/openapi.yaml")
    assert as_json.status_code == 200 and as_yaml.status_code == 200
    assert as_json.json()["openapi"].startswith("3.1")
    assert yaml.safe_load(as_yaml.text) == as_json.json()


async def test_docs_pages_load_nothing_from_other_hosts(service):
    for page in ("/docs", "/redoc"):
        response = await service.http.get(page)
        assert response.status_code == 200
        html = response.text
        assert "/openapi.json" in html
        # no <script src=...>/<link href=...> pointing at another host
        assert not re.search(r"""<(script|link)[^>]+(src|href)=["']https?://""", html)


async def test_docs_open_without_api_key(make_service):
    svc = await make_service(api_keys=("secret",))
    assert (await svc.http.get("/docs")).status_code == 200
    assert (await svc.http.get("/openapi.json")).status_code == 200
    assert (await svc.http.get("/status")).status_code == 401
