"""Pictures of what happened: pure chart builders, report objects and the HTML report file."""
