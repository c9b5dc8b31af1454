"""Client fingerprints computed from what a connection sent, not from what it claims."""
