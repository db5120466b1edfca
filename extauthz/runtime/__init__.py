"""The running server: the gRPC service and health, the authorizer that wires the pure
decision to live state, worker processes, metrics, logs, JWKS fetching, TLS, failure limits."""
