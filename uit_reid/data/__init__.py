"""Data readers, synthetic pedestrians, torch datasets and samplers."""
