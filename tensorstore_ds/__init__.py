"""tensorstore_ds: image-text and audio-text datasets as training-ready tensors."""
