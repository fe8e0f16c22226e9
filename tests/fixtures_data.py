"""Data fixtures (owned by the sources work)."""
