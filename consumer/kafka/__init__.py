"""Kafka edges of the pipeline: the source, the offset tracker and the dead-letter producer."""
