"""Policy sets: versioned policy documents (the format of spec/core.md).

`POST /v1/policy-sets` stores version 1, `PUT /v1/policy-sets/{id}` a new version (old ones
are kept), `DELETE` is soft. The body is the document as JSON, or as YAML when sent with a
YAML content type; a document that does not load is refused with 422 and `problems`, each with
its line, policy id and field where known. Admin keys only.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from pathguard.errors import PolicyLoadError, PolicyProblem
from pathguard.platform.app.auth import Credentials, require_admin
from pathguard.platform.app.routes._common import AUTH_ERRORS, Sessions, read_body
from pathguard.platform.app.schemas import ErrorOut, PolicySetOut
from pathguard.platform.store import (
    NotFoundError,
    PolicySetView,
    create_policy_set,
    delete_policy_set,
    get_policy_set,
    list_policy_sets,
    update_policy_set,
)
from pathguard.policies import PolicySet

__all__ = ["MAX_DOCUMENT_BYTES", "router"]

MAX_DOCUMENT_BYTES: Final = 1024 * 1024
_YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

router = APIRouter(prefix="/v1/policy-sets", tags=["policy sets"], responses=AUTH_ERRORS)

_DOCUMENT_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "description": "A policy document as JSON, or as YAML with a YAML content type.",
        "content": {
            "application/json": {"schema": PolicySet.model_json_schema()},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}
_REFUSED: Final[dict[int | str, dict[str, Any]]] = {
    413: {"model": ErrorOut, "description": "The document is larger than 1 MiB."},
    422: {"model": ErrorOut, "description": "The document does not load; see `problems`."},
}


async def _document_body(request: Request) -> tuple[bytes, str]:
    body = await read_body(request, MAX_DOCUMENT_BYTES, "The policy document")
    return body, request.headers.get("content-type", "application/json")


Document = Annotated[tuple[bytes, str], Depends(_document_body)]
SetId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The policy set's id.")]


def _parse(document: tuple[bytes, str]) -> dict[str, Any]:
    """The document as validated data; PolicyLoadError (with lines) when it does not load."""
    raw, content_type = document
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyLoadError(
            [PolicyProblem(message="the document is not UTF-8 text.", source="<request>")]
        ) from None
    if content_type.split(";")[0].strip().lower() in _YAML_TYPES:
        return PolicySet.from_yaml(text, source="<request>").to_dict()
    return PolicySet.from_json(text, source="<request>").to_dict()


def _out(view: PolicySetView) -> PolicySetOut:
    return PolicySetOut.model_validate(view, from_attributes=True)


@router.post(
    "",
    response_model=PolicySetOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_DOCUMENT_BODY,
    responses=_REFUSED,
)
def create(document: Document, sessions: Sessions, credentials: Credentials) -> PolicySetOut:
    """Store a new policy set at version 1."""
    with sessions.begin() as session:
        principal = require_admin(session, credentials)
        return _out(create_policy_set(session, _parse(document), created_by=principal.key_id))


@router.get("", response_model=list[PolicySetOut])
def policy_sets(
    sessions: Sessions,
    credentials: Credentials,
    include_deleted: Annotated[bool, Query(description="Also list deleted sets.")] = False,
) -> list[PolicySetOut]:
    """Every policy set at its current version, by id."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        return [_out(v) for v in list_policy_sets(session, include_deleted=include_deleted)]


@router.get("/{set_id}", response_model=PolicySetOut, responses={404: {"model": ErrorOut}})
def policy_set(
    set_id: SetId,
    sessions: Sessions,
    credentials: Credentials,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="A past version.")] = None,
) -> PolicySetOut:
    """A policy set at its current version, or at `?version=`."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        view = get_policy_set(session, set_id, version=version)
        if view is None:
            at = f" at version {version}" if version is not None else ""
            raise NotFoundError(
                f"There is no policy set {set_id}{at}; list them with GET /v1/policy-sets."
            )
        return _out(view)


@router.put(
    "/{set_id}",
    response_model=PolicySetOut,
    openapi_extra=_DOCUMENT_BODY,
    responses={404: {"model": ErrorOut}, **_REFUSED},
)
def update(
    set_id: SetId, document: Document, sessions: Sessions, credentials: Credentials
) -> PolicySetOut:
    """Store a new version of a policy set; the earlier versions are kept."""
    with sessions.begin() as session:
        principal = require_admin(session, credentials)
        data = _parse(document)
        return _out(update_policy_set(session, set_id, data, created_by=principal.key_id))


@router.delete(
    "/{set_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: {"model": ErrorOut}}
)
def delete(set_id: SetId, sessions: Sessions, credentials: Credentials) -> Response:
    """Delete a policy set (softly: it stops applying to agents, its versions are kept)."""
    with sessions.begin() as session:
        require_admin(session, credentials)
        delete_policy_set(session, set_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
