"""A hand-written FastAPI + SQLModel tasks API: the baseline bench/api_mix.py measures the
tasks function against. Never imported by the product (tests/unit/test_layout.py)."""
