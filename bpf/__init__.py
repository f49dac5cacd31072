"""rsttrace.bpf."""
