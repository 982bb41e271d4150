"""What the pipeline writes: Slicer segmentations, saliency volumes, reports, tables, PNGs."""
