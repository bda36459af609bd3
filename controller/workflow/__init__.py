"""The incident workflow: roles found through one registry, an engine that runs them in
order with durable stages, and the pure analysis they share."""
