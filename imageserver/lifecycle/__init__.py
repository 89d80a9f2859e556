"""What happens to images, told to whoever listens."""
