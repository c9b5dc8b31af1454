"""The tools around the service, not the service: the embedded broker, the demo, the
benchmarks (`detector bench`, `--offline`), the producer of simulated traffic and
`detector eval`. The worker never imports them; the CLI imports each in its command."""
