"""The pure core: request facts, credentials and token records, the route policy and its file
format, JWT verification, and the decision. Nothing here does I/O or reads the clock."""
