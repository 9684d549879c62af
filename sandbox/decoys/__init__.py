"""Decoys: harmless production changes planted beside the faults (red herrings)."""
