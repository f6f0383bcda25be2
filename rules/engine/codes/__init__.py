"""Codes and what they mean: the terminology list and value sets, ICD-10-CM spans and the official code
set, UCUM units."""
