"""The on-disk store format: array layout, caption index and manifest."""
