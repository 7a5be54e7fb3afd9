"""Budgets: reserve a request's estimated cost before the call, settle the actual cost after it,
in one atomic store operation (SQLite embedded, Redis shared); soft limits degrade, alerts fire once
a period."""

from tierwise.router.budgets.manager import BudgetManager, BudgetReservation, Degrade, build_budget_manager

__all__ = [
    "BudgetManager",
    "BudgetReservation",
    "Degrade",
    "build_budget_manager",
]
