"""The durable command queue: validated writes and named commands, executed in order per asset."""
