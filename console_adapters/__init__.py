"""console_adapters package."""
