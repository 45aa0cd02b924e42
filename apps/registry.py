"""Registering the contract's JSON Schemas with a schema registry (the Confluent Schema
Registry REST API, which Karapace, Redpanda and Apicurio's compatibility layer also
serve): subject ``<topic>-value`` (the topic-name strategy), ``schemaType`` JSON.

``vigil topics`` calls it when ``VIGIL_SCHEMA_REGISTRY_URL`` is set. Registering a schema
the subject already holds returns its id again (idempotent); a schema the subject's
compatibility rules refuse is an error naming the subject."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from vigil.apps.settings import redacted
from vigil.errors import VigilError
from vigil.streams.contract import JSON_TOPICS, json_schema
from vigil.streams.topics import TopicNames

__all__ = ["RegistryError", "register_schemas"]

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(VigilError, RuntimeError):
    """The schema registry could not be reached or refused a schema."""


def _request(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
    if parts.username is not None:  # https://user:password@host: basic authentication
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def register_schemas(
    registry_url: str, topics: TopicNames, timeout_s: float = 10.0
) -> dict[str, int]:
    """Register every JSON topic's schema under ``<topic>-value``; returns subject -> id."""
    base = registry_url.rstrip("/")
    ids: dict[str, int] = {}
    for suffix in JSON_TOPICS:
        subject = f"{topics.name(suffix)}-value"
        url = f"{base}/subjects/{urllib.parse.quote(subject, safe='')}/versions"
        body = {"schemaType": "JSON", "schema": json.dumps(json_schema(suffix))}
        try:
            ids[subject] = int(_request(url, body, timeout_s)["id"])
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise RegistryError(
                f"the schema registry refused {subject} (HTTP {exc.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            where = redacted(base)
            raise RegistryError(f"cannot register {subject} at {where}: {exc}") from None
    return ids
