"""The `raylens` command line; `doctor/` holds its checks, one module per section."""
