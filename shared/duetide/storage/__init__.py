"""Storage: the tables, sessions, schema migrations and the transactional outbox."""
