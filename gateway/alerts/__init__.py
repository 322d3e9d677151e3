"""Alert rules (pure), their persistence and lifecycle: active -> acknowledged -> cleared."""
