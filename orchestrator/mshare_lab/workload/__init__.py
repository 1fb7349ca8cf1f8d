"""The SGA workload: building the C program, running it on this host, predicting its cost."""
