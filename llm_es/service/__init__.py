"""The application and its NATS surfaces: turns, channel commands, summaries, recovery."""
