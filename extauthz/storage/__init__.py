"""The Redis side: connections (standalone, TLS, Sentinel, Cluster), the one module that
builds keys and runs commands (store), the token cache and the invalidation listener that
keeps it honest."""
