"""Pipeline stages for the kidney CT classifier; each stage is `components.<stage>`."""
