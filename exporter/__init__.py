"""Prometheus exporter: metrics of resets by cause, conntrack and TCP state (rsttrace export)."""
