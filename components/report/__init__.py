"""report: one self-contained HTML report per run — the figures of the paper and the study, honestly."""
