"""Services: each state change in the caller's one transaction, emitting its events.

Tasks, series, preferences, reminders, commands, the sweep and notify; they use the
rules, storage, events and channels, and know nothing of HTTP.
"""
