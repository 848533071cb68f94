"""The stream side: the event contract, topics, producer, the Faust app and its pipeline,
dataset replay, and followers of topics."""
