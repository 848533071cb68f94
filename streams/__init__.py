"""The stream side: event contracts, topics, the Faust app and its agents, replay."""
