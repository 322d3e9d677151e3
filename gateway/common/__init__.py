"""Pure helpers (no I/O beyond reading a file) that the plant may reuse too; never imports devices."""
