"""Alembic script directory for workflow-rl (a package so that env.py ships in wheels)."""
