"""Package stage: the registry's champion -> BentoML model store -> a Bento built from serving/."""
