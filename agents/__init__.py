"""The I/O shell: Faust app, Kafka I/O, metrics, CLI."""
