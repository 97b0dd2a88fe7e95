"""The log shipper sidecar: tail, sanitise, cap, batch, ship, checkpoint, drain."""
