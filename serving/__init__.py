"""The BentoML service that serves the champion kidney CT classifier."""
