"""`linkscope history` commands (placeholder until its issue lands; registers nothing yet)."""
