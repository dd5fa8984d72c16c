"""The service on the bin: the daemon, systemd notification, checks, the review folder, demo and CLI."""
