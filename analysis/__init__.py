"""rsttrace.analysis."""
