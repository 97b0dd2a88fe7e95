"""Code both programs share: the wire protocol's limits, ids, markers and phase table."""
