"""Command-line layer: parses options, calls into stages, reports. No training logic lives here."""
