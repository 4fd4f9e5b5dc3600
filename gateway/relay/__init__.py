"""The relay: from an admitted request to the backend and back (the fair scheduler
lives here: :mod:`gateway.relay.fair_queue`)."""
