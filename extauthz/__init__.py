"""extauthz: an Envoy external-authorization server for machine-learning model endpoints."""

__version__ = "0.1.0"
