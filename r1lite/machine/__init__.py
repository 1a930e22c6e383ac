"""This machine: its processes (one per GPU under a launcher) and the precision a recipe computes in here."""
