"""Generic HTTP webhook: the alert as JSON to a URL of the user's choosing."""
