"""Administration: the policy sync job and the token lifecycle (what the CLI calls)."""
