"""What runs in the host: supervising workers and serving their requests."""
