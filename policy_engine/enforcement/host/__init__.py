"""The host side of process isolation: what runs in the host to build and watch a worker."""
