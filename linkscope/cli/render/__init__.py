"""Rich rendering, one module per command group; no logic beyond presentation."""
