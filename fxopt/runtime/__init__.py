"""Custom ops the rewritten graphs call at run time (CPU offload and prefetch)."""
