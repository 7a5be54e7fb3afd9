"""``tierwise estimate``: monthly tokens and cost of a planned workload per routing policy."""
