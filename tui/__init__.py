"""rsttrace.tui."""
