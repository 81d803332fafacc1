"""Use cases, named by verbs, that every entrypoint (HTTP, worker, CLI) calls.

Service functions take a session and never commit: the entrypoint owns the transaction.
"""

from webhook_service.services.clients import (
    audit,
    authenticate,
    create_client,
    list_clients,
    revoke_client,
)
from webhook_service.services.jobs import (
    can_see,
    clinic_for,
    default_clinic,
    get_job,
    job_view,
    submit_job,
)
from webhook_service.services.reconcile import (
    Lookup,
    due_lookups,
    fail_past_deadline,
    lookup_params,
    pick_outcome,
    record_lookup,
)
from webhook_service.services.retention import purge_expired_phi, reencrypt_phi
from webhook_service.services.submissions import (
    Claim,
    claim_due_job,
    expire_claims,
    learn_reference_id,
    record_accepted,
    record_ambiguous,
    record_rejected,
    record_transient,
)
from webhook_service.services.webhooks import Recorded, match_parked, record_webhook

__all__ = [
    "Claim",
    "Lookup",
    "Recorded",
    "audit",
    "authenticate",
    "can_see",
    "claim_due_job",
    "clinic_for",
    "create_client",
    "default_clinic",
    "due_lookups",
    "expire_claims",
    "fail_past_deadline",
    "get_job",
    "job_view",
    "learn_reference_id",
    "list_clients",
    "lookup_params",
    "match_parked",
    "pick_outcome",
    "purge_expired_phi",
    "record_accepted",
    "record_ambiguous",
    "record_lookup",
    "record_rejected",
    "record_transient",
    "record_webhook",
    "reencrypt_phi",
    "revoke_client",
    "submit_job",
]
