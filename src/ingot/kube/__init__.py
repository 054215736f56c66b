"""The Kubernetes target: releases rendered to manifests, rolled out by plans, compared for drift.

Pure parts (no cluster needed): `names`, `render`, `plan`, `drift`. Parts that talk to a cluster go
through the small `api.KubeApi` interface, so they can be tested against an in-memory fake.
"""
