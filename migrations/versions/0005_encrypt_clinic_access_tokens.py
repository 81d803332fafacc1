"""Encrypt clinics' Cobalt access tokens at rest (they can write into a clinic's EMR).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from webhook_service.settings import Settings

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clinics") as batch:
        batch.add_column(sa.Column("access_token_enc", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, access_token FROM clinics")).all()
    if rows:
        keys = Settings().phi_keys()
        for clinic_id, token in rows:
            bind.execute(
                sa.text("UPDATE clinics SET access_token_enc = :token WHERE id = :id"),
                {"id": clinic_id, "token": keys.encrypt(token.encode("utf-8"))},
            )
    with op.batch_alter_table("clinics") as batch:
        batch.alter_column("access_token_enc", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("access_token")


def downgrade() -> None:
    with op.batch_alter_table("clinics") as batch:
        batch.add_column(sa.Column("access_token", sa.String(500), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, access_token_enc FROM clinics")).all()
    if rows:
        keys = Settings().phi_keys()
        for clinic_id, token in rows:
            bind.execute(
                sa.text("UPDATE clinics SET access_token = :token WHERE id = :id"),
                {"id": clinic_id, "token": keys.decrypt(bytes(token)).decode("utf-8")},
            )
    with op.batch_alter_table("clinics") as batch:
        batch.alter_column("access_token", existing_type=sa.String(500), nullable=False)
        batch.drop_column("access_token_enc")
