"""The data plane: one long-lived process per machine (the edge) that serves every project's routers.

`server` is the edge process, `client` what agents use to drive it (`EdgeRouter`, a `Router`), `home`
where it keeps its socket and state. DESIGN.md, "Two planes", says why it lives apart from the agent.
"""
