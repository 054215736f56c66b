"""Automatic TLS for the edge's `tls: auto` routes: ACME issuance (`acme_client`), certificates on disk
(`store`), the renewal schedule (`renewal`) and the task that keeps them all current (`manager`)."""
