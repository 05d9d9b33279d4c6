"""The command-line client of the tasks API (`duetide task|series|notifications|login`).

Thin on purpose: it turns friendly arguments into the API's JSON and the API's answers
into tables; every rule (validation, recurrence, reminders) stays on the server.
"""
