"""Model fixtures (owned by the encoder work)."""
