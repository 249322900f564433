"""Helpline: an open-source customer-support bot. ``helpline.cli`` is the entry point."""

__version__ = "0.1.0"
