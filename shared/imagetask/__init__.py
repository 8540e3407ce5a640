"""Generic image classification task on the shared core."""
