"""Ingest a PACS export into object storage: label, check, de-identify, quarantine, manifest."""
