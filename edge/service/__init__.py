"""The service on the bin: the daemon and its MQTT commands, systemd notification, checks, the review
folder and its labelling page, the demo and the CLI."""
