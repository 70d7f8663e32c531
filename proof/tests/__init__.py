"""The instruments' own tests; `make test` runs them beside tests/ while proof/ exists."""
