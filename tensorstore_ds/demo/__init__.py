"""The built-in sample dataset and the demo run (``tensorstore-ds demo``)."""
