"""rsttrace.tracer."""
