"""The process: thread pools, ports, shutdown, logs, the manhole."""
