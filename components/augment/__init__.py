"""augment: the augmentation policy as Keras preprocessing layers, plus a preview grid."""
