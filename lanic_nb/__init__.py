"""lanic-nb."""
