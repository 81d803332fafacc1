"""Use cases, named by verbs, that every entrypoint (HTTP, worker, CLI) calls.

Service functions take a session and never commit: the entrypoint owns the transaction.
"""

from webhook_service.services.claims import Claim, claim_due_job
from webhook_service.services.clients import (
    audit,
    authenticate,
    create_client,
    list_clients,
    reissue_token,
    revoke_client,
)
from webhook_service.services.deadline import mark_past_deadline
from webhook_service.services.deliveries import Recorded
from webhook_service.services.job_views import Polled, etag_of, job_view, poll_job
from webhook_service.services.jobs import (
    accept_job,
    can_see,
    clinic_for,
    default_clinic,
    get_job,
    submit_job,
)
from webhook_service.services.limits import check_backlog, count_submission, waiting_jobs
from webhook_service.services.parking import match_parked
from webhook_service.services.reconcile import (
    Lookup,
    due_lookups,
    lookup_params,
    read_cobalt_log,
    record_lookup,
)
from webhook_service.services.retention import purge_expired_phi, reencrypt_phi
from webhook_service.services.submissions import (
    expire_claims,
    learn_reference_id,
    record_accepted,
    record_ambiguous,
    record_rejected,
    record_transient,
)
from webhook_service.services.support import (
    CSV_COLUMNS,
    JobPage,
    JobRow,
    Staff,
    audit_staff,
    csv_row,
    filters_detail,
    find_jobs,
    job_row,
    list_jobs,
    support_job_fields,
    support_job_view,
)
from webhook_service.services.support_actions import record_chart_outcome, retry_job
from webhook_service.services.support_inbox import (
    attention_jobs,
    delivery_view,
    job_timeline,
    list_inbox,
    lists_attention_jobs,
    read_delivery,
)
from webhook_service.services.support_reconcile import (
    ReconcileResult,
    begin_reconcile,
    finish_reconcile,
)
from webhook_service.services.support_replay import replay_delivery
from webhook_service.services.webhooks import receive_webhook, record_webhook

__all__ = [
    "CSV_COLUMNS",
    "Claim",
    "JobPage",
    "JobRow",
    "Lookup",
    "Polled",
    "ReconcileResult",
    "Recorded",
    "Staff",
    "accept_job",
    "attention_jobs",
    "audit",
    "audit_staff",
    "authenticate",
    "begin_reconcile",
    "can_see",
    "check_backlog",
    "claim_due_job",
    "clinic_for",
    "count_submission",
    "create_client",
    "csv_row",
    "default_clinic",
    "delivery_view",
    "due_lookups",
    "etag_of",
    "expire_claims",
    "filters_detail",
    "find_jobs",
    "finish_reconcile",
    "get_job",
    "job_row",
    "job_timeline",
    "job_view",
    "learn_reference_id",
    "list_clients",
    "list_inbox",
    "list_jobs",
    "lists_attention_jobs",
    "lookup_params",
    "mark_past_deadline",
    "match_parked",
    "poll_job",
    "purge_expired_phi",
    "read_cobalt_log",
    "read_delivery",
    "receive_webhook",
    "record_accepted",
    "record_ambiguous",
    "record_chart_outcome",
    "record_lookup",
    "record_rejected",
    "record_transient",
    "record_webhook",
    "reencrypt_phi",
    "reissue_token",
    "replay_delivery",
    "retry_job",
    "revoke_client",
    "submit_job",
    "support_job_fields",
    "support_job_view",
    "waiting_jobs",
]
