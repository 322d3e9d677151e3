"""The FastAPI edge service."""
