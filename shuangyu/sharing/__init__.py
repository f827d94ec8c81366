"""Sharing a model: its card (card), the check that a folder is a loadable model (folder), the Hub push (push)."""
