"""Generate the embedded default PACS export: DICOM CT phantoms of kidneys with lesions."""
