"""Fitting the reader: data assembly, negatives, the training loop, export. Never imported when serving."""
