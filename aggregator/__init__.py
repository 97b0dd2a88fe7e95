"""The aggregator: durable idempotent ingest and finalize into chunk artifacts and summaries."""
