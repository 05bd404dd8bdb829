"""preprocess: window, resize, group and split images into compact arrays."""
