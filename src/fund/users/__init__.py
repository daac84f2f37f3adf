"""Platform accounts and their roles."""
