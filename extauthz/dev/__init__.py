"""The developer's tools: the local stack (`extauthz up`), its CA, the demo model server and
the Envoy configuration generator."""

DEFAULT_BASE_PORT = 10000  # `extauthz up` listens on loopback ports from here...
PORTS_USED = 10  # ...to DEFAULT_BASE_PORT + 9 (see stack.py)
