"""What brings originals in: the fetcher and who it may reach."""
