"""duetide: tasks, series, reminders and notifications as serverless functions."""
