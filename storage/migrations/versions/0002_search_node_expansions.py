"""search_nodes.expansions: how many times a node was expanded, stored instead of derived.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Before this revision the search derived a node's expansion count from the number of distinct
``round`` values among its children, which loses an expansion whose children were all duplicates
(no child row). Existing rows are backfilled with that derivation, raised to 1 for a node flagged
``expanded`` that has no children (such a node was expanded at least once). No view reads
``search_nodes``, so the views of 0001 are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHILD_ROUNDS = (
    "(SELECT COUNT(DISTINCT c.round) FROM search_nodes c WHERE c.parent_node_id = search_nodes.id)"
)
"""Correlated subquery: distinct simulation rounds among a node's children (the old derivation)."""

BACKFILL_SQL = (
    f"UPDATE search_nodes SET expansions = CASE WHEN {_CHILD_ROUNDS} = 0 AND expanded THEN 1"
    f" ELSE {_CHILD_ROUNDS} END"
)
"""Fill ``expansions`` of existing nodes (SQL that SQLite and PostgreSQL share)."""


def upgrade() -> None:
    """Add the column (existing rows get 0 from the server default), then backfill it."""
    # A plain ADD COLUMN works on both backends (SQLite accepts NOT NULL with a default), so the
    # table is never rebuilt: its self-referencing foreign key and rows stay as they are.
    op.add_column(
        "search_nodes",
        sa.Column("expansions", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(BACKFILL_SQL)


def downgrade() -> None:
    """Drop the column (batch mode: SQLite rebuilds the table)."""
    with op.batch_alter_table("search_nodes", schema=None) as batch_op:
        batch_op.drop_column("expansions")
