"""Stateless Kafka consumer-group workers: preprocess and route."""
