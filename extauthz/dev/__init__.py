"""The developer's tools: the local stack (`extauthz up`), its CA, the demo model server and
the Envoy configuration generator."""
