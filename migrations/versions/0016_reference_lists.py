"""Each clinic's copy of Cobalt's provider, location and pharmacy lists (issue 21, pre-flight).

Two new tables; the previous release never reads them: safe to apply first.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reference_lists",
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("fetched_at", UTC_TIME, nullable=True),
        sa.Column("attempted_at", UTC_TIME, nullable=True),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_reference_lists_clinic_id_clinics")
        ),
        sa.PrimaryKeyConstraint("clinic_id", "kind", name=op.f("pk_reference_lists")),
    )
    op.create_table(
        "reference_items",
        sa.Column("clinic_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("ehr_id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("status", sa.String(40), nullable=True),
        sa.ForeignKeyConstraint(
            ["clinic_id"], ["clinics.id"], name=op.f("fk_reference_items_clinic_id_clinics")
        ),
        sa.PrimaryKeyConstraint("clinic_id", "kind", "ehr_id", name=op.f("pk_reference_items")),
    )


def downgrade() -> None:
    op.drop_table("reference_items")
    op.drop_table("reference_lists")
