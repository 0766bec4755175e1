"""Cross-hospital consultation: a case's owner shares it with another hospital by name.

The consultant sees the shared case, its jobs and artifacts, with a grant (each includes the
ones before it): ``view`` (read and download), ``comment``, ``review`` (review and reject) and
``approve``. It never uploads into the case, submits or cancels. What it downloads is what the
owner uploaded and the grid made: pseudonymized objects when the owner pseudonymized, since the
re-identification map never leaves the owner's site. A share ends when the owner revokes it or at
its ``until`` time; both are checked at every call, so the next call after either is refused
exactly as a case that does not exist. Every read through a share is audited (action ``consult``).

Plain functions over the store; the hospital servicer only translates protobuf.
"""

from __future__ import annotations

from .approval import APPROVE, COMMENT, REJECT, REVIEW, audit
from .errors import InvalidArgument, NotFound, PermissionDenied
from .ids import now_ms
from .store.base import Store
from .store.records import GRANTS, VIEW, CaseRecord, ShareRecord
from .store.records import APPROVE as APPROVE_GRANT
from .store.records import COMMENT as COMMENT_GRANT
from .store.records import REVIEW as REVIEW_GRANT

# The grant each review action needs.
ACTION_GRANTS = {COMMENT: COMMENT_GRANT, REVIEW: REVIEW_GRANT, REJECT: REVIEW_GRANT, APPROVE: APPROVE_GRANT}


def share_case(store: Store, case: CaseRecord, owner: str, hospital: str, grant: str, until_ms: int) -> ShareRecord:
    """Share ``case`` (owned by ``owner``) with ``hospital``, or change an existing share.

    Raises
    ------
    InvalidArgument
        An unknown grant, the owner itself, or an end in the past.
    NotFound
        No hospital of that name (or a revoked one).
    """
    grant = grant or VIEW
    if grant not in GRANTS:
        raise InvalidArgument(f"unknown grant {grant!r}; one of {', '.join(GRANTS)}")
    if hospital == owner:
        raise InvalidArgument(f"case {case.case_id} is {owner}'s own: share it with another hospital")
    target = store.get_hospital(hospital)
    if target is None or target.revoked_ms:
        raise NotFound(f"no hospital {hospital!r} on this grid")
    now = now_ms()
    if until_ms and until_ms <= now:
        raise InvalidArgument(f"the share would end in the past (until_ms {until_ms}, now {now})")
    share = ShareRecord(case.case_id, hospital, grant, owner, now, until_ms)
    store.put_share(share)
    audit(store, owner, "share", {"case_id": case.case_id, "name": hospital},
          f"shared with {hospital}, grant {grant}" + (f", until {until_ms} ms" if until_ms else ""))
    return share


def unshare_case(store: Store, case: CaseRecord, owner: str, hospital: str) -> ShareRecord:
    """End a share now.

    Raises
    ------
    NotFound
        The case is not shared with ``hospital``.
    """
    share = store.get_share(case.case_id, hospital)
    if share is None or not store.delete_share(case.case_id, hospital):
        raise NotFound(f"case {case.case_id} is not shared with {hospital!r}")
    audit(store, owner, "unshare", {"case_id": case.case_id, "name": hospital}, f"share with {hospital} revoked")
    return share


def active_share(store: Store, case_id: str, hospital: str) -> ShareRecord | None:
    """The share of ``case_id`` with ``hospital`` if it has not ended."""
    share = store.get_share(case_id, hospital)
    if share is None or (share.until_ms and share.until_ms <= now_ms()):
        return None
    return share


def consult(store: Store, case: CaseRecord, hospital: str, what: str, objects: dict[str, str],
            need: str = VIEW) -> ShareRecord:
    """Admit a consultant's call on a shared case and audit it.

    Raises
    ------
    NotFound
        No live share (revoked, expired or never made): as for a case that does not exist.
    PermissionDenied
        A share whose grant is less than ``need``.
    """
    share = active_share(store, case.case_id, hospital)
    if share is None:
        raise NotFound(f"no case {case.case_id!r}")
    if GRANTS.index(share.grant) < GRANTS.index(need):
        raise PermissionDenied(f"case {case.case_id} is shared with {hospital} to {share.grant}; {what} needs the "
                               f"{need} grant (the owner shares again with --grant {need})")
    audit(store, hospital, "consult", {"case_id": case.case_id, "owner": case.hospital, **objects},
          f"{what} through a share (grant {share.grant})")
    return share
