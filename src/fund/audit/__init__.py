"""The audit trail: every change, by whom and when; append-only."""
