"""features stage: the converted CT backbone's pooled features of every prepared image, cached by DVC."""
