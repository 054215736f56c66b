"""The HTTP API and the web dashboard: a thin layer over `ingot.operations`, served by `ingot serve`."""
