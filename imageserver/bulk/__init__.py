"""Work in bulk: the command line, batches, a Dask cluster."""
