"""Talking to a Yggdrasil daemon: admin-socket client, version detection, normalized models."""
