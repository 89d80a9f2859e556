"""HTTP: the main port's routes and the admin port's probes."""
