"""rsttrace.lab."""
