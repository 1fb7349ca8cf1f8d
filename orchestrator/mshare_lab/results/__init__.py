"""Results: the SQLite store, exports and statistical comparison."""
