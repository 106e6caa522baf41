"""profile-consumer: offline-channel Kafka events into Adobe Target profiles."""

__version__ = "0.1.0"
