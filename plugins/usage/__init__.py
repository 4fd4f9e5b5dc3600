"""Built-in usage observers (``on_usage`` hook)."""
