"""Reading checkpoints (memory-mapped safetensors) and writing merged ones (streaming safetensors)."""
