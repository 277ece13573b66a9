"""The rollout engine: persistence and the advancing loop around ``fleet.rollout``."""
