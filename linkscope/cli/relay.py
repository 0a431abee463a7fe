"""`linkscope relay` commands (placeholder until its issue lands; registers nothing yet)."""
