"""``mqtt:``: the building's broker: the outbox drain, Home Assistant discovery and commands."""
