"""rsttrace: live TCP connection-reset tracer with root-cause correlation."""

__version__ = "0.1.0"
