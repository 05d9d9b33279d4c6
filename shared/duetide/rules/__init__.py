"""Pure rules: values in, values out; no database, no clock, no network.

Recurrence (RRULE expansion and its work budgets), reminder times and quiet hours.
Everything else may import these; these import nothing of duetide but `vocabulary`.
"""
