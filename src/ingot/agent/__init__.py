"""The long-running agent and its local client."""
