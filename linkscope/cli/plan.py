"""`linkscope plan` commands (placeholder until its issue lands; registers nothing yet)."""
