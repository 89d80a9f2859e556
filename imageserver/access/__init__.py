"""Who may do what: write tokens and signed URLs."""
